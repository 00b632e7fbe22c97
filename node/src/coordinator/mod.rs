//! The search coordinator.
