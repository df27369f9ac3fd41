//! quiver-query
