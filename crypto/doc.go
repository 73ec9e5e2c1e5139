// Package crypto owns transparent encryption and node authentication:
// WireGuard (kernel or embedded userspace, configured through wgctrl),
// IPsec XFRM states from a key file, and the cluster CAs that certify nodes.
// It is empty until the encryption issue.
package crypto
