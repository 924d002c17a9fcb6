//! Recompiles the server when the built web app (`dist/`) changes, so the
//! copy embedded by `web::Embedded` is never older than the app (new
//! content-hashed file names included).
fn main() {
    println!("cargo:rerun-if-changed=../dist");
}
