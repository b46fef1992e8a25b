//! Where a tensor lives and where an op runs.

use std::fmt;
use std::str::FromStr;

use super::error::Error;

/// A compute device. `Cuda(n)` is the n-th CUDA GPU (needs the `cuda` feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceType {
    Cpu,
    Cuda(usize),
}

impl DeviceType {
    pub fn is_cpu(self) -> bool {
        matches!(self, DeviceType::Cpu)
    }
}

impl fmt::Display for DeviceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceType::Cpu => write!(f, "cpu"),
            DeviceType::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceType {
    type Err = Error;

    /// Parses `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidArgument(format!("invalid device `{s}`: expected `cpu`, `cuda` or `cuda:N`"));
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceType::Cpu),
            "cuda" => Ok(DeviceType::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceType::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_devices() {
        assert_eq!("cpu".parse::<DeviceType>().ok(), Some(DeviceType::Cpu));
        assert_eq!("cuda".parse::<DeviceType>().ok(), Some(DeviceType::Cuda(0)));
        assert_eq!("CUDA:3".parse::<DeviceType>().ok(), Some(DeviceType::Cuda(3)));
        assert!("gpu".parse::<DeviceType>().is_err());
        assert!("cuda:x".parse::<DeviceType>().is_err());
        assert_eq!(DeviceType::Cuda(1).to_string(), "cuda:1");
    }
}
