//! netward controller.
