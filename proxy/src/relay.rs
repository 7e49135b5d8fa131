//! The splice(2) relay between a client and its upstream.
