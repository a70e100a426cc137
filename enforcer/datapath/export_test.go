package datapath

// What the external tests (package datapath_test, which can import datapathtest: this package's
// own tests cannot, datapathtest imports datapath) share with this package's tests.
var (
	UnitCluster = unitCluster
	CompileYAML = compileYAML
)

const UnitPolicies = unitPolicies
