//! Reading what guests print on their serial console.

/// A counter value a guest's shell printed (`TICK0 70`, `COUNT=70`): the
/// digits at the start of `value`, the text after the counter's prefix.
///
/// The guest kernel writes its messages to the console directly, so one
/// can land inside a shell's line, before its newline
/// (`TICK0 70[   17.377695] EXT4-fs (vda): unmounting filesystem.`). What
/// follows the digits must be nothing or such a message (it starts with
/// `[`); anything else is not a count.
pub fn leading_count(value: &str) -> Option<u64> {
    let value = value.trim_end();
    let digits = value.len() - value.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (number, rest) = value.split_at(digits);
    if !(rest.is_empty() || rest.starts_with('[')) {
        return None;
    }
    number.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_count_is_read() {
        assert_eq!(leading_count("70"), Some(70));
        assert_eq!(leading_count("70\r"), Some(70));
    }

    #[test]
    fn a_kernel_message_before_the_newline_is_left_out() {
        assert_eq!(
            leading_count("70[   17.377695] EXT4-fs (vda): unmounting filesystem."),
            Some(70)
        );
        assert_eq!(leading_count("70["), Some(70));
    }

    #[test]
    fn anything_else_is_not_a_count() {
        assert_eq!(leading_count(""), None);
        assert_eq!(leading_count("x70"), None);
        assert_eq!(leading_count("7x0"), None);
        assert_eq!(leading_count(" 70"), None);
        assert_eq!(leading_count("99999999999999999999999"), None);
    }
}
