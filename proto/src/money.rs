//! Amounts for people: integer cents as dollars with thousands separators.

/// `123456` → `"$1,234.56"`, `-50` → `"-$0.50"`.
pub fn dollars(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let c = cents.unsigned_abs();
    let whole = (c / 100).to_string();
    let mut grouped = String::with_capacity(whole.len() + whole.len() / 3);
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{sign}${grouped}.{:02}", c % 100)
}

#[cfg(test)]
mod tests {
    use super::dollars;

    #[test]
    fn dollars_for_people() {
        assert_eq!(dollars(0), "$0.00");
        assert_eq!(dollars(5), "$0.05");
        assert_eq!(dollars(-50), "-$0.50");
        assert_eq!(dollars(20_000), "$200.00");
        assert_eq!(dollars(500_000), "$5,000.00");
        assert_eq!(dollars(123_456_789), "$1,234,567.89");
        assert_eq!(dollars(i64::MIN), "-$92,233,720,368,547,758.08");
    }
}
