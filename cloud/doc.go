// Package cloud groups the cloud providers' metadata used by policy and
// nodes; cloud/aws reads EC2 (instances and network interfaces by security
// group or tag, and this node's metadata through IMDSv2).
package cloud
