package dbotel

// RouteOf is routeOf, for the tests.
var RouteOf = routeOf
