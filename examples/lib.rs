//! Examples live in this package's `[[example]]` targets: `cargo run -p sd-examples --example NAME`.
