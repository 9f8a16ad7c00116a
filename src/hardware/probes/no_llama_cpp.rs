//! Without the `llamacpp` feature there is no llama.cpp device list.

use crate::hardware::Accelerator;

pub(super) fn devices() -> Vec<Accelerator> {
    Vec::new()
}
