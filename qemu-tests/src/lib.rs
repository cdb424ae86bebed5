mod cpio;

pub use cpio::Layer;
