//! imgforge catches panics inside fatfs 0.3.6 (see `inspect::read_fat`):
//! such a panic is handled, not a crash. libfuzzer-sys's panic hook aborts
//! before any unwinding, so it is wrapped to let panics raised in fatfs's
//! source unwind to imgforge's catch_unwind; any other panic still aborts,
//! and a fatfs panic that imgforge does not catch reaches libfuzzer-sys's
//! own catch_unwind, which aborts too.
pub fn let_imgforge_catch_fatfs_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.location().is_some_and(|l| l.file().contains("/fatfs-")) {
                return;
            }
            abort(info);
        }));
    });
}
