//! capstan's integration tests: one binary, one module per area (ripgrep's layout).

mod support;

mod homes;
