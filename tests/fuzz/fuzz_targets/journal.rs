//! An upload journal's bytes -> Journal::parse (what Journal::load reads),
//! and what a resumed upload does with it.
#![no_main]

use imgforge::aws::ebs::journal::Journal;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut journal) = Journal::parse(text) else {
        return;
    };
    let _ = journal.block_records();
    let confirmed = journal.confirmed_set();
    journal.set_confirmed(&confirmed);
    let _ = journal.matches(&journal.image.clone(), &journal.params.clone());
    let _ = journal.derive_client_token();
    journal.start_over();
    let json = serde_json::to_string(&journal).expect("serializes");
    let _ = Journal::parse(&json);
});
