//! sizeclass
