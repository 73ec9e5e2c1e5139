// Package cloud owns cloud provider metadata used in policy: AWS EC2
// security groups and tags resolved to address sets for toGroups/fromGroups.
// It is empty until the AWS issue.
package cloud
