"""Tools that drive a real server from outside, for the tests, the benchmarks and scripts: never imported by the server."""
