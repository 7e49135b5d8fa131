//! Kubernetes object names (DNS-1123), checked the way the API server checks them: the
//! one check for node names, namespaces, service accounts and label-key prefixes.

/// Why a name is not a DNS-1123 label or subdomain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("empty")]
    Empty,
    /// The name is longer than its kind allows.
    #[error("longer than {max} characters")]
    TooLong {
        /// The most characters allowed (63 for a label, 253 for a subdomain).
        max: usize,
    },
    /// A subdomain has an empty label (`a..b`, `.a`, `a.`).
    #[error("empty label")]
    EmptyLabel,
    /// A label of a subdomain is longer than 63 characters.
    #[error("a label is longer than 63 characters")]
    LabelTooLong,
    /// A character other than a lowercase letter, a digit or `-` (or `.` in a subdomain).
    #[error(
        "{}",
        if *.dots {
            "only lowercase letters, digits, '-' and '.' are allowed"
        } else {
            "only lowercase letters, digits and '-' are allowed"
        }
    )]
    BadCharacter {
        /// Whether `.` is allowed (a subdomain).
        dots: bool,
    },
    /// A label starts or ends with `-`.
    #[error("a label starts or ends with '-'")]
    Hyphen,
}

/// The longest DNS-1123 label.
pub const LABEL_MAX: usize = 63;
/// The longest DNS-1123 subdomain.
pub const SUBDOMAIN_MAX: usize = 253;

/// Checks a DNS-1123 label (RFC 1123): namespace and service-account names.
pub fn dns1123_label(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > LABEL_MAX {
        return Err(NameError::TooLong { max: LABEL_MAX });
    }
    label(name, false)
}

/// Checks a DNS-1123 subdomain: node names, most object names, label-key prefixes.
pub fn dns1123_subdomain(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > SUBDOMAIN_MAX {
        return Err(NameError::TooLong { max: SUBDOMAIN_MAX });
    }
    for part in name.split('.') {
        if part.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if part.len() > LABEL_MAX {
            return Err(NameError::LabelTooLong);
        }
        label(part, true)?;
    }
    Ok(())
}

fn label(part: &str, dots: bool) -> Result<(), NameError> {
    if !part
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(NameError::BadCharacter { dots });
    }
    if part.starts_with('-') || part.ends_with('-') {
        return Err(NameError::Hyphen);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name, then what it is as a label, then as a subdomain.
    type Case = (&'static str, Result<(), NameError>, Result<(), NameError>);

    #[test]
    fn labels_and_subdomains_as_the_api_server_checks_them() {
        for ok in ["a", "node-1", "0", "a1-b2"] {
            assert_eq!(dns1123_label(ok), Ok(()), "{ok}");
            assert_eq!(dns1123_subdomain(ok), Ok(()), "{ok}");
        }
        assert_eq!(dns1123_subdomain("node-a.example.com"), Ok(()));
        let cases: &[Case] = &[
            ("", Err(NameError::Empty), Err(NameError::Empty)),
            (
                "Node_A",
                Err(NameError::BadCharacter { dots: false }),
                Err(NameError::BadCharacter { dots: true }),
            ),
            ("-a", Err(NameError::Hyphen), Err(NameError::Hyphen)),
            ("a-", Err(NameError::Hyphen), Err(NameError::Hyphen)),
            ("a.b", Err(NameError::BadCharacter { dots: false }), Ok(())),
            (
                "a..b",
                Err(NameError::BadCharacter { dots: false }),
                Err(NameError::EmptyLabel),
            ),
            (
                "a.-b",
                Err(NameError::BadCharacter { dots: false }),
                Err(NameError::Hyphen),
            ),
        ];
        for (name, as_label, as_subdomain) in cases {
            assert_eq!(&dns1123_label(name), as_label, "label {name:?}");
            assert_eq!(&dns1123_subdomain(name), as_subdomain, "subdomain {name:?}");
        }
        let long = "a".repeat(64);
        assert_eq!(dns1123_label(&long), Err(NameError::TooLong { max: 63 }));
        assert_eq!(dns1123_subdomain(&long), Err(NameError::LabelTooLong));
        let long = ["a"; 127].join(".");
        assert_eq!(long.len(), 253);
        assert_eq!(dns1123_subdomain(&long), Ok(()));
        assert_eq!(
            dns1123_subdomain(&format!("{long}a")),
            Err(NameError::TooLong { max: 253 })
        );
    }

    #[test]
    fn messages_say_what_is_allowed() {
        assert_eq!(
            NameError::BadCharacter { dots: true }.to_string(),
            "only lowercase letters, digits, '-' and '.' are allowed"
        );
        assert_eq!(
            NameError::BadCharacter { dots: false }.to_string(),
            "only lowercase letters, digits and '-' are allowed"
        );
    }
}
