//! Connection unit tests (scenario tests live in tests/).
