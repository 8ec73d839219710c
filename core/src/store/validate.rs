//! Request checks every backend applies the same way, before touching its data.

use std::time::Duration;

use super::StoreError;

/// A key must not be empty (etcd refuses one too).
pub fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Invalid("the key is empty".to_string()));
    }
    Ok(())
}

/// A TTL must be at least a millisecond, the resolution of [`crate::Timestamp`]:
/// anything shorter would expire at the instant it is created.
pub fn check_ttl(ttl: Option<Duration>) -> Result<(), StoreError> {
    match ttl {
        Some(ttl) if ttl < Duration::from_millis(1) => Err(StoreError::Invalid(format!(
            "TTL {ttl:?} is shorter than the store's resolution of 1 ms"
        ))),
        _ => Ok(()),
    }
}
