// Package policy is the policy engine, the second of the two layers of
// policy: it takes the documents of agent/policy/api (parsed, validated and
// normalised there) and owns what is done with them. The Repository stores
// the documents, persisted and replaced all-or-nothing, by scope; the
// Resolver matches their selectors against the identities and endpoints the
// node knows, compiles the rules and keeps the desired policy map entries
// (map-state) up to date incrementally; Trace explains one verdict.
package policy
