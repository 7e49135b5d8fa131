//! `netward signer`: signs netward's node-tunnel CertificateSigningRequests.
