//! quiver-proto
