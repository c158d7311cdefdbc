//! Pure formatting shared by the `kubectl diag` commands: tables, ages, durations, colour.
//! Nothing here does IO, so every layout is unit-tested.

use std::io::Write as _;
use std::time::Duration;

use tabwriter::TabWriter;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// Whether to colour the output. Decided once at the edge (terminal, `NO_COLOR`, `--color`),
/// then passed down so the renderers stay pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Style {
    pub colour: bool,
}

/// What a piece of text means, which decides its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Bad,
    Warn,
    Busy,
    Dim,
    Heading,
}

impl Style {
    pub const PLAIN: Style = Style { colour: false };
    pub const COLOUR: Style = Style { colour: true };

    /// `--color=auto` decides by whether stdout is a terminal and by `NO_COLOR`
    /// (<https://no-color.org>: set and not empty means no colour).
    pub fn detect(choice: ColorChoice, stdout_is_terminal: bool, no_color: Option<&str>) -> Self {
        let colour = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => stdout_is_terminal && no_color.is_none_or(str::is_empty),
        };
        Self { colour }
    }

    /// `text` in the tone's colour, or as it is when colour is off.
    pub fn paint(self, tone: Tone, text: &str) -> String {
        if !self.colour || text.is_empty() {
            return text.to_owned();
        }
        let code = match tone {
            Tone::Good => "32",
            Tone::Bad => "31",
            Tone::Warn => "33",
            Tone::Busy => "36",
            Tone::Dim => "2",
            Tone::Heading => "1",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

/// `--color`: when to colour the output.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColorChoice {
    /// When stdout is a terminal and NO_COLOR is not set.
    #[default]
    Auto,
    Always,
    Never,
}

/// The tone of an Abnormal phase ("" before admission).
pub fn phase_tone(phase: &str) -> Tone {
    match phase {
        "Succeeded" => Tone::Good,
        "Failed" => Tone::Bad,
        "" | "<pending>" => Tone::Warn,
        _ => Tone::Busy,
    }
}

/// The tone of a step result.
pub fn result_tone(result: &str) -> Tone {
    match result {
        "Succeeded" => Tone::Good,
        "Failed" => Tone::Bad,
        "Running" => Tone::Busy,
        _ => Tone::Dim,
    }
}

/// The tone of a KubeProber checker status.
pub fn checker_tone(status: &str) -> Tone {
    match status {
        "PASS" | "INFO" => Tone::Good,
        "ERROR" => Tone::Bad,
        "WARN" | "UNKNOWN" => Tone::Warn,
        _ => Tone::Dim,
    }
}

/// A table laid out as kubectl lays out `get`: upper-case headers, columns separated by three
/// spaces, no trailing spaces. Cells may carry colour; widths count only what a terminal shows
/// (ANSI colour takes no room, a CJK character or an emoji takes two columns).
///
/// The layout is `tabwriter`'s, the Rust port of Go's `text/tabwriter` that kubectl uses.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut text = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            // Every line has every column (missing cells are empty, extra ones are left out), so
            // all lines form one block and align together; the last column is not padded.
            for i in 0..columns {
                if i > 0 {
                    text.push('\t');
                }
                let cell = line.get(i).map(String::as_str).unwrap_or("");
                // A tab or a line break would end the cell or the row early.
                text.extend(cell.chars().map(|c| match c {
                    '\t' | '\n' | '\r' => ' ',
                    c => c,
                }));
            }
            text.push('\n');
        }
        let mut writer = TabWriter::new(Vec::with_capacity(text.len() * 2))
            .minwidth(0)
            .padding(3)
            .ansi(true);
        writer
            .write_all(text.as_bytes())
            .expect("writing to memory cannot fail");
        let laid_out = writer.into_inner().expect("writing to memory cannot fail");
        // Only spaces were added to UTF-8 text.
        let laid_out = String::from_utf8(laid_out).expect("tabwriter keeps UTF-8 intact");
        let mut out = String::with_capacity(laid_out.len());
        for line in laid_out.split_terminator('\n') {
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The number of columns a terminal shows: ANSI colour sequences take no room, wide characters
/// (CJK, most emoji) take two.
pub fn visible_width(s: &str) -> usize {
    let mut width = 0;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // Skip to the end of the sequence (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            width += c.width().unwrap_or(0);
        }
    }
    width
}

/// At most `max` columns wide, the last one an ellipsis when cut. One line only: a table cell
/// must not break the table.
pub fn truncate(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    let cut = line.width() > max || s.contains('\n');
    if !cut {
        return line.to_owned();
    }
    let room = max.saturating_sub(1);
    let mut used = 0;
    let mut out: String = line
        .chars()
        .take_while(|c| {
            used += c.width().unwrap_or(0);
            used <= room
        })
        .collect();
    out.push('…');
    out
}

/// An age exactly as kubectl prints it (apimachinery's HumanDuration): `45s`, `5m12s`, `15m`,
/// `4h2m`, `20h`, `3d2h`, `400d`, `2y30d`.
pub fn age(d: Duration) -> String {
    let seconds = d.as_secs();
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        };
    }
    if days < 365 * 2 {
        return format!("{days}d");
    }
    if days < 365 * 8 {
        return match days % 365 {
            0 => format!("{}y", days / 365),
            dy => format!("{}y{dy}d", days / 365),
        };
    }
    format!("{}y", days / 365)
}

/// A step's duration: `4ms`, `1.2s`, `2m3s`.
pub fn duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// How long after `origin` something happened, for the timeline: `+0.3s`, `+12s`, `+2m3s`.
pub fn offset(origin: jiff::Timestamp, at: jiff::Timestamp) -> String {
    let ms = at.duration_since(origin).as_millis();
    if ms < 0 {
        return "+0s".into();
    }
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    // Kubernetes timestamps are often whole seconds: no decimals that only say ".0".
    if ms < 10_000 && ms % 1000 >= 100 {
        format!("+{}.{}s", ms / 1000, (ms % 1000) / 100)
    } else if ms < 120_000 {
        format!("+{}s", ms / 1000)
    } else {
        format!("+{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// The age of `t` at `now`.
pub fn age_at(t: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let d = now.duration_since(t);
    age(d.unsigned_abs())
}

/// A timestamp for people: RFC 3339 in UTC, to the second.
pub fn timestamp(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Indents every line of `text` by `by` spaces.
pub fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_like_kubectl_and_leave_no_trailing_spaces() {
        let mut t = Table::new(["NAME", "PHASE", "AGE"]);
        t.row(["demo-web", "Succeeded", "5s"]);
        t.row(["x", "Failed", ""]);
        assert_eq!(
            t.render(),
            "NAME       PHASE       AGE\n\
             demo-web   Succeeded   5s\n\
             x          Failed\n"
        );
    }

    #[test]
    fn coloured_cells_do_not_widen_their_column() {
        let mut t = Table::new(["A", "B"]);
        t.row([Style::COLOUR.paint(Tone::Good, "ok"), "x".into()]);
        let out = t.render();
        let second = out.lines().nth(1).unwrap();
        assert_eq!(visible_width(second), "ok   x".len(), "{second:?}");
        assert!(second.contains("\x1b[32mok\x1b[0m"));
    }

    #[test]
    fn wide_characters_take_two_columns_and_keep_the_columns_aligned() {
        let mut t = Table::new(["NAME", "MESSAGE", "AGE"]);
        t.row(["日本語", "ディスク満杯", "5s"]);
        t.row(["abc", "ok", "1m"]);
        t.row([
            "🔥".into(),
            Style::COLOUR.paint(Tone::Bad, "火事"),
            "2h".into(),
        ]);
        assert_eq!(
            t.render(),
            "NAME     MESSAGE        AGE\n\
             日本語   ディスク満杯   5s\n\
             abc      ok             1m\n\
             🔥       \x1b[31m火事\x1b[0m           2h\n"
        );
        assert_eq!(visible_width("日本語"), 6);
        assert_eq!(visible_width(&Style::COLOUR.paint(Tone::Bad, "火事")), 4);
    }

    #[test]
    fn a_tab_or_line_break_in_a_cell_does_not_break_the_table() {
        let mut t = Table::new(["A", "B"]);
        t.row(["x\ty", "z"]);
        t.row(["1\n2", "3"]);
        assert_eq!(t.render(), "A     B\nx y   z\n1 2   3\n");
    }

    #[test]
    fn cells_missing_or_extra_are_empty_or_left_out() {
        let mut t = Table::new(["A", "B", "C"]);
        t.row(["only"]);
        t.row(["1", "2", "3", "4"]);
        t.row(Vec::<String>::new());
        assert_eq!(t.render(), "A      B   C\nonly\n1      2   3\n\n");
        assert_eq!(Table::new(["ONE"]).render(), "ONE\n");
    }

    #[test]
    fn plain_style_never_writes_escape_codes() {
        assert_eq!(Style::PLAIN.paint(Tone::Bad, "Failed"), "Failed");
    }

    #[test]
    fn colour_follows_the_terminal_and_no_color() {
        assert!(Style::detect(ColorChoice::Auto, true, None).colour);
        assert!(!Style::detect(ColorChoice::Auto, false, None).colour);
        assert!(!Style::detect(ColorChoice::Auto, true, Some("1")).colour);
        // NO_COLOR set but empty does not count.
        assert!(Style::detect(ColorChoice::Auto, true, Some("")).colour);
        assert!(Style::detect(ColorChoice::Always, false, Some("1")).colour);
        assert!(!Style::detect(ColorChoice::Never, true, None).colour);
    }

    #[test]
    fn ages_read_like_kubectl() {
        let s = Duration::from_secs;
        assert_eq!(age(s(0)), "0s");
        assert_eq!(age(s(119)), "119s");
        assert_eq!(age(s(130)), "2m10s");
        assert_eq!(age(s(300)), "5m");
        assert_eq!(age(s(900)), "15m");
        assert_eq!(age(s(4 * 3600 + 120)), "4h2m");
        assert_eq!(age(s(24 * 3600 + 300)), "24h");
        assert_eq!(age(s(3 * 86400 + 7200)), "3d2h");
        assert_eq!(age(s(400 * 86400)), "400d");
        assert_eq!(age(s(3 * 365 * 86400 + 5 * 86400)), "3y5d");
    }

    #[test]
    fn durations_and_offsets_read_at_a_glance() {
        assert_eq!(duration_ms(4), "4ms");
        assert_eq!(duration_ms(1234), "1.2s");
        assert_eq!(duration_ms(123_000), "2m3s");
        assert_eq!(duration_ms(-5), "0ms");
        let t0: jiff::Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        assert_eq!(offset(t0, at("2026-11-22T10:00:00.3Z")), "+0.3s");
        assert_eq!(offset(t0, at("2026-11-22T10:00:42Z")), "+42s");
        assert_eq!(offset(t0, at("2026-11-22T10:00:02Z")), "+2s");
        assert_eq!(offset(t0, at("2026-11-22T10:00:00.012Z")), "+0s");
        assert_eq!(offset(t0, at("2026-11-22T10:02:03Z")), "+2m3s");
        assert_eq!(offset(t0, at("2026-11-22T09:59:00Z")), "+0s");
        assert_eq!(timestamp(t0), "2026-11-22T10:00:00Z");
    }

    #[test]
    fn truncation_keeps_one_line_and_marks_the_cut() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdefghijkl", 5), "abcd…");
        assert_eq!(truncate("line one\nline two", 40), "line one…");
    }

    #[test]
    fn truncation_counts_columns_not_characters() {
        assert_eq!(truncate("日本語テキスト", 5), "日本…");
        assert_eq!(visible_width(&truncate("日本語テキスト", 5)), 5);
        assert_eq!(truncate("日本語", 6), "日本語");
    }

    #[test]
    fn indent_leaves_empty_lines_empty() {
        assert_eq!(indent("a\n\nb", 2), "  a\n\n  b");
    }
}
