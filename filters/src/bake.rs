//! Baking an initialised linear memory into the module.
//!
//! After `weir_init` the guest's whole state is its linear memory. The
//! module is rewritten so that this memory is its initial memory: the
//! memory section's minimum becomes the initialised size and the data
//! section becomes the initialised contents. Instances of the baked module
//! start out initialised, and wasmtime maps their memory copy-on-write from
//! one shared image, so a fresh instance per call costs about as little as
//! an instance of the original module (no copying, no `weir_init`).
//!
//! Requirements (checked here or by the ABI checks): one defined, 32-bit,
//! unshared memory with 64 KiB pages; no data count section (so no passive
//! data segments, whose indexes would change). A start function is dropped:
//! it ran before `weir_init`.

/// Section ids of the Wasm binary format.
const MEMORY_SECTION: u8 = 5;
const START_SECTION: u8 = 8;
const CODE_SECTION: u8 = 10;
const DATA_SECTION: u8 = 11;
const DATA_COUNT_SECTION: u8 = 12;
const CUSTOM_SECTION: u8 = 0;

/// Wasm page size.
const PAGE: usize = 64 << 10;
/// Zero runs at least this long split data segments.
const ZERO_GAP: usize = 4 << 10;

/// Returns `module` with `memory` (a multiple of 64 KiB) as its initial
/// linear memory. The error says why the module cannot be baked.
pub(crate) fn bake(module: &[u8], memory: &[u8]) -> Result<Vec<u8>, String> {
    if module.get(..8) != Some(b"\0asm\x01\0\0\0".as_slice()) {
        return Err("not a core Wasm module (version 1)".to_owned());
    }
    if !memory.len().is_multiple_of(PAGE) {
        return Err("memory is not a whole number of pages".to_owned());
    }
    let pages = (memory.len() / PAGE) as u64;
    let mut out = Vec::with_capacity(module.len() + memory.len() / 2);
    out.extend_from_slice(&module[..8]);
    let mut wrote_data = false;
    let mut at = 8;
    while at < module.len() {
        let start = at;
        let id = module[at];
        at += 1;
        let size = read_leb(module, &mut at)? as usize;
        let body = module
            .get(at..at + size)
            .ok_or_else(|| "section runs past the end".to_owned())?;
        at += size;
        match id {
            MEMORY_SECTION => section(&mut out, MEMORY_SECTION, &memory_section(body, pages)?),
            // The start function already ran before `weir_init`; running it
            // again on the initialised memory could undo the init.
            START_SECTION => {}
            DATA_COUNT_SECTION => {
                return Err("data count section (passive data segments) not supported".to_owned());
            }
            DATA_SECTION => {
                section(&mut out, DATA_SECTION, &data_section(memory));
                wrote_data = true;
            }
            _ => {
                // Non-custom sections after the code section are the data
                // section; if the module had none, it goes right after code.
                if !wrote_data && id != CUSTOM_SECTION && id > CODE_SECTION {
                    section(&mut out, DATA_SECTION, &data_section(memory));
                    wrote_data = true;
                }
                out.extend_from_slice(&module[start..at]);
                if id == CODE_SECTION && !has_data_section(module, at)? {
                    section(&mut out, DATA_SECTION, &data_section(memory));
                    wrote_data = true;
                }
            }
        }
    }
    if !wrote_data {
        return Err("module has no code section".to_owned());
    }
    Ok(out)
}

fn has_data_section(module: &[u8], mut at: usize) -> Result<bool, String> {
    while at < module.len() {
        let id = module[at];
        at += 1;
        let size = read_leb(module, &mut at)? as usize;
        if id == DATA_SECTION {
            return Ok(true);
        }
        at += size;
    }
    Ok(false)
}

/// The memory section with its one memory's minimum set to `pages`.
fn memory_section(body: &[u8], pages: u64) -> Result<Vec<u8>, String> {
    let mut at = 0;
    if read_leb(body, &mut at)? != 1 {
        return Err("module must define exactly one memory".to_owned());
    }
    let flags = *body.get(at).ok_or("truncated memory section")?;
    at += 1;
    let _minimum = read_leb(body, &mut at)?;
    let mut out = vec![1, flags];
    match flags {
        0 => write_leb(&mut out, pages),
        1 => {
            let maximum = read_leb(body, &mut at)?;
            if maximum < pages {
                return Err("memory maximum below the initialised size".to_owned());
            }
            write_leb(&mut out, pages);
            write_leb(&mut out, maximum);
        }
        _ => return Err(format!("unsupported memory flags {flags:#x}")),
    }
    Ok(out)
}

/// Active segments for memory 0 holding the non-zero parts of `memory`.
fn data_section(memory: &[u8]) -> Vec<u8> {
    let mut segments: Vec<(usize, usize)> = Vec::new();
    for (i, chunk) in memory.chunks(ZERO_GAP).enumerate() {
        if chunk.iter().all(|&b| b == 0) {
            continue;
        }
        let start = i * ZERO_GAP;
        let end = start + chunk.len();
        match segments.last_mut() {
            Some((_, last_end)) if *last_end == start => *last_end = end,
            _ => segments.push((start, end)),
        }
    }
    let mut out = Vec::with_capacity(memory.len() / 2);
    write_leb(&mut out, segments.len() as u64);
    for (start, end) in segments {
        out.push(0); // active, memory 0
        out.push(0x41); // i32.const
        write_sleb(&mut out, i64::from(start as u32 as i32));
        out.push(0x0B); // end
        write_leb(&mut out, (end - start) as u64);
        out.extend_from_slice(&memory[start..end]);
    }
    out
}

fn section(out: &mut Vec<u8>, id: u8, body: &[u8]) {
    out.push(id);
    write_leb(out, body.len() as u64);
    out.extend_from_slice(body);
}

fn read_leb(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or("truncated LEB128")?;
        *at += 1;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("LEB128 too long".to_owned())
}

fn write_leb(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn write_sleb(out: &mut Vec<u8>, mut value: i64) {
    loop {
        let byte = (value & 0x7F) as u8;
        value >>= 7;
        let done = (value == 0 && byte & 0x40 == 0) || (value == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn leb_round_trip() {
        for value in [0, 1, 127, 128, 300, 65536, u64::from(u32::MAX)] {
            let mut out = Vec::new();
            write_leb(&mut out, value);
            assert_eq!(read_leb(&out, &mut 0).unwrap(), value);
        }
        let mut out = Vec::new();
        write_sleb(&mut out, 65536);
        assert_eq!(out, [0x80, 0x80, 0x04]);
        out.clear();
        write_sleb(&mut out, -1);
        assert_eq!(out, [0x7F]);
        out.clear();
        write_sleb(&mut out, 64);
        assert_eq!(out, [0xC0, 0x00]);
    }

    #[test]
    fn data_segments_skip_zero_runs() {
        let mut memory = vec![0u8; PAGE];
        memory[10] = 1;
        memory[3 * ZERO_GAP + 5] = 2;
        memory[4 * ZERO_GAP] = 3;
        let section = data_section(&memory);
        // two segments: chunk 0 (header 6 bytes), chunks 3..5 (header 8)
        assert_eq!(section[0], 2);
        assert_eq!(section.len(), 1 + (6 + ZERO_GAP) + (8 + 2 * ZERO_GAP));
    }
}
