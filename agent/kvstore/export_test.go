package kvstore

// SetListPage sets the watches' list page size (tests) and returns the
// undo.
func SetListPage(n int64) func() {
	old := listPage
	listPage = n
	return func() { listPage = old }
}
