//! flannel's `alloc` backend: the node holds a lease and writes `subnet.env`; nothing
//! carries packets (something else routes the subnets).

use async_trait::async_trait;
use weft_core::config::BackendType;
use weft_core::lease::Lease;

use super::Backend;
use crate::DatapathError;

/// See the module docs.
#[derive(Debug, Default)]
pub struct AllocBackend;

#[async_trait]
impl Backend for AllocBackend {
    fn kind(&self) -> BackendType {
        BackendType::Alloc
    }

    async fn lease_acquired(&mut self, _lease: &Lease) -> Result<(), DatapathError> {
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), DatapathError> {
        Ok(())
    }
}
