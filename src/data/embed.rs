//! Build script (named in Cargo.toml): packs the built-in data, `rootfs/`,
//! `boot/` and `kernel-configs/`, into one tar archive that `src/data/`
//! embeds, so that an installed or copied binary needs no source tree. Tar
//! keeps what the image needs of each file: its mode (scripts stay
//! executable) and symlinks.

use std::path::Path;

const DATA_FOLDERS: [&str; 3] = ["rootfs", "boot", "kernel-configs"];

fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let file = std::fs::File::create(Path::new(&out).join("data.tar")).expect("create data.tar");
    let mut archive = tar::Builder::new(file);
    archive.follow_symlinks(false);
    archive.mode(tar::HeaderMode::Deterministic);
    for folder in DATA_FOLDERS {
        println!("cargo:rerun-if-changed={folder}");
        archive
            .append_dir_all(folder, Path::new(&root).join(folder))
            .unwrap_or_else(|e| panic!("packing {folder}: {e}"));
    }
    archive.finish().expect("finish data.tar");
}
