//! Fuzz the `.bd2` reader: no input may make it panic, and whatever it accepts must be readable.
//!
//! Seeds: `cargo test --release --test fuzz_corpus` writes valid files of every format to
//! fuzz/corpus/bd2_reader/. Smoke run: `cargo +nightly fuzz run bd2_reader -- -max_total_time=60`.
#![no_main]

use bd_formats::bd2::{Bd2File, ReadOptions};
use libfuzzer_sys::fuzz_target;

fn exercise(data: &[u8], verify_checksums: bool) {
    if let Ok(file) = Bd2File::from_bytes(data, ReadOptions { verify_checksums }) {
        for t in file.tensors() {
            let values = file.tensor_f32(t);
            assert_eq!(values.len(), t.numel());
        }
        let _ = file.bits_per_weight();
        let _ = file.tokenizer_json();
    }
}

fuzz_target!(|data: &[u8]| {
    exercise(data, true);
    // Mutations of the JSON header would almost always stop at its CRC; fix the CRC up so the
    // fuzzer reaches the structural checks behind it.
    if data.len() >= 64 {
        let len = u64::from_le_bytes(data[16..24].try_into().unwrap());
        if let Some(end) = 64usize.checked_add(len as usize).filter(|&e| e <= data.len() && len < (64 << 20)) {
            let mut fixed = data.to_vec();
            let crc = crc32fast::hash(&fixed[64..end]);
            fixed[12..16].copy_from_slice(&crc.to_le_bytes());
            exercise(&fixed, false);
        }
    }
});
