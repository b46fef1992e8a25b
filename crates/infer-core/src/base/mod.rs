//! Devices, host storage and the crate's error type.

pub mod buffer;
pub mod device;
pub mod error;

pub use buffer::Storage;
pub use device::DeviceType;
pub use error::{Error, Result};
