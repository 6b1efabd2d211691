//! Sizes as users write them, in scenarios, simulator options and on the
//! command line: one grammar everywhere.
#![forbid(unsafe_code)]

/// Parses `4096`, `7`, `1_048_576`, `4KiB`, `1MiB`, `2GiB`, `1TiB`. Units are
/// binary whatever their spelling (`K`, `KB`, `KiB`; any case), since
/// device state and page sizes are powers of two.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: u64 = num
        .replace('_', "")
        .parse()
        .map_err(|_| format!("`{text}` is not a size (write e.g. 4096, 7, 4KiB or 1MiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "unknown size unit `{}` in `{text}`: use KiB, MiB, GiB or TiB",
                unit.trim()
            ))
        }
    };
    num.checked_mul(1 << shift)
        .ok_or_else(|| format!("size `{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn units_are_binary_in_any_spelling() {
        for (text, want) in [
            ("7", 7),
            ("4096", 4096),
            ("1_048_576", 1 << 20),
            (" 4K ", 4096),
            ("64KiB", 65536),
            ("1mib", 1 << 20),
            ("3 MB", 3 << 20),
            ("4G", 4 << 30),
            ("2TiB", 2 << 40),
            ("5B", 5),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn errors_name_the_text() {
        for (text, says) in [
            ("KiB", "`KiB` is not a size"),
            ("", "`` is not a size"),
            ("-1", "`-1` is not a size"),
            ("4PiB", "unknown size unit `PiB` in `4PiB`"),
            ("99999999999TiB", "size `99999999999TiB` is too large"),
            ("99999999999999999999", "is not a size"),
        ] {
            let err = parse_size(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
