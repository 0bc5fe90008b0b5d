//! configure
