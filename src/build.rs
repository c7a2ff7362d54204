//! Build script: compile the provider profiles in `filters/` into the binary, so the
//! gateway runs on its embedded defaults with no files on disk.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("filters");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|x| x == "toml"));
    files.sort();
    let mut out = String::from("/// Provider profiles compiled from `filters/` at build time.\npub const EMBEDDED_FILTERS: &[(&str, &str)] = &[\n");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            f.display().to_string()
        );
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into()))
        .join("embedded_filters.rs");
    if let Err(e) = std::fs::write(&dest, out) {
        println!("cargo:warning=cannot write {}: {e}", dest.display());
    }
    symbol_order();
}

/// Release builds for x86_64 Linux (GNU), where rustc links with LLD by default: lay out the
/// functions that start-up and a request execute side by side at the start of `.text`
/// (`link/loopgate.order`, written by `link/gen-order.py`), so the kernel maps those pages
/// and not ~70% of a 23 MB `.text` (idle RSS, issue 14: docs/benchmarks.md, "Session 16").
/// Only the binary's layout changes, not its code. Names that are not in the binary (a stale
/// list) are skipped silently. `LOOPGATE_NO_SYMBOL_ORDER=1` turns it off, for a linker
/// without `--symbol-ordering-file` (GNU ld).
fn symbol_order() {
    println!("cargo:rerun-if-env-changed=LOOPGATE_NO_SYMBOL_ORDER");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let lld_default = var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu";
    if !lld_default || var("PROFILE") != "release" || !var("LOOPGATE_NO_SYMBOL_ORDER").is_empty() {
        return;
    }
    // A linker the user chose (a target `linker`, or rustflags that pick another linker or
    // flavour) may not know the flag: keep the default layout rather than fail the build.
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    if !var("RUSTC_LINKER").is_empty()
        || flags.contains("linker")
        || flags.contains("fuse-ld")
        || flags.contains("link-self-contained")
    {
        return;
    }
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/loopgate.order");
    println!("cargo:rerun-if-changed={}", order.display());
    if order.is_file() {
        println!(
            "cargo:rustc-link-arg-bin=loopgate=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=loopgate=-Wl,--no-warn-symbol-ordering");
    }
}
