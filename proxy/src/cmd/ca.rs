//! `netward ca`: the offline certificate authority for the lab and `netward run`.
