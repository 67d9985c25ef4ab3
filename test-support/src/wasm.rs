//! Hand-written Wasm filter modules for tests of the filter sandbox (the
//! filters crate's own tests and the gateway's).

/// A module that follows the ABI and finds nothing, except that when the
/// scanned text starts with `!` it runs `misbehave` inside `weir_scan`.
pub fn module_misbehaving_on_bang(misbehave: &str) -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "weir_abi_version") (result i32) (i32.const 1))
  (func (export "weir_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "weir_init") (param i32 i32) (result i32) (i32.const 0))
  (func $deep (param i32) (result i32)
    (i32.add (call $deep (i32.add (local.get 0) (i32.const 1))) (i32.const 1)))
  (func (export "weir_scan") (param $ptr i32) (param $len i32) (result i64)
    (if (i32.and (i32.gt_u (local.get $len) (i32.const 0))
                 (i32.eq (i32.load8_u (local.get $ptr)) (i32.const 33)))
      (then {misbehave}))
    (i32.store (i32.const 0) (i32.const 0))
    (i32.store (i32.const 4) (local.get $len))
    (i64.const 8)))"#
    )
}
