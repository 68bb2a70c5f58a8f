//! What the binary tests share: where the programs under test are.

use std::path::PathBuf;

/// The `vmail` CLI this test run built. Cargo builds it beside
/// `vmail-devnet` (`cargo test --workspace` builds both), and `vmail demo`
/// and `vmail testnet` find `vmail-devnet` there.
pub(crate) fn vmail() -> PathBuf {
    let vmail = PathBuf::from(env!("CARGO_BIN_EXE_vmail-devnet")).with_file_name("vmail");
    assert!(
        vmail.exists(),
        "{} is missing: build it with `cargo build -p vmail-node` (`cargo test --workspace` builds it)",
        vmail.display()
    );
    vmail
}
