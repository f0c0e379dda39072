//! ANSI colours of a log line (SGR escapes) as HTML: what a recipe printed in colour reads in
//! colour, everything else escaped. Cursor movements and other control sequences are dropped;
//! a carriage return (a progress bar redrawing itself) keeps only what was drawn last.

#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Style {
    fg: Option<Colour>,
    bg: Option<Colour>,
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Colour {
    /// One of the 16 terminal colours (0–7, and 8–15 bright), themed by the stylesheet.
    Indexed(u8),
    Rgb(u8, u8, u8),
}

impl Style {
    fn open(&self, out: &mut String) {
        let mut classes = Vec::new();
        let mut css = Vec::new();
        for (colour, prefix, property) in [(self.fg, "f", "color"), (self.bg, "b", "background")] {
            match colour {
                Some(Colour::Indexed(n)) => classes.push(format!("a{prefix}{n}")),
                Some(Colour::Rgb(r, g, b)) => {
                    css.push(format!("{property}:#{r:02x}{g:02x}{b:02x}"))
                }
                None => {}
            }
        }
        for (on, class) in [
            (self.bold, "ab"),
            (self.dim, "ad"),
            (self.italic, "ai"),
            (self.underline, "au"),
        ] {
            if on {
                classes.push(class.to_string());
            }
        }
        out.push_str("<span");
        if !classes.is_empty() {
            out.push_str(&format!(" class=\"{}\"", classes.join(" ")));
        }
        if !css.is_empty() {
            out.push_str(&format!(" style=\"{}\"", css.join(";")));
        }
        out.push('>');
    }

    /// Applies one SGR sequence's parameters.
    fn apply(&mut self, params: &[u16]) {
        let mut i = 0;
        if params.is_empty() {
            *self = Style::default();
        }
        while i < params.len() {
            match params[i] {
                0 => *self = Style::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                3 => self.italic = true,
                4 => self.underline = true,
                22 => {
                    self.bold = false;
                    self.dim = false;
                }
                23 => self.italic = false,
                24 => self.underline = false,
                n @ 30..=37 => self.fg = Some(Colour::Indexed((n - 30) as u8)),
                n @ 90..=97 => self.fg = Some(Colour::Indexed((n - 90 + 8) as u8)),
                n @ 40..=47 => self.bg = Some(Colour::Indexed((n - 40) as u8)),
                n @ 100..=107 => self.bg = Some(Colour::Indexed((n - 100 + 8) as u8)),
                39 => self.fg = None,
                49 => self.bg = None,
                n @ (38 | 48) => {
                    let colour = match params.get(i + 1) {
                        Some(5) => {
                            let c = params.get(i + 2).copied();
                            i += 2;
                            c.map(extended)
                        }
                        Some(2) => {
                            let rgb = (
                                params.get(i + 2).copied(),
                                params.get(i + 3).copied(),
                                params.get(i + 4).copied(),
                            );
                            i += 4;
                            match rgb {
                                (Some(r), Some(g), Some(b)) => {
                                    Some(Colour::Rgb(r as u8, g as u8, b as u8))
                                }
                                _ => None,
                            }
                        }
                        _ => None,
                    };
                    if n == 38 {
                        self.fg = colour;
                    } else {
                        self.bg = colour;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// A colour of the 256-colour palette: the first 16 are the themed ones, then the 6×6×6 cube
/// and the grey ramp.
fn extended(n: u16) -> Colour {
    let n = n.min(255) as u8;
    match n {
        0..=15 => Colour::Indexed(n),
        16..=231 => {
            let v = n - 16;
            let level = |x: u8| if x == 0 { 0 } else { 55 + x * 40 };
            Colour::Rgb(level(v / 36), level((v / 6) % 6), level(v % 6))
        }
        _ => {
            let g = 8 + (n - 232) * 10;
            Colour::Rgb(g, g, g)
        }
    }
}

fn escape_into(out: &mut String, c: char) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '"' => out.push_str("&quot;"),
        '\'' => out.push_str("&#39;"),
        c if c.is_control() && c != '\t' => {}
        c => out.push(c),
    }
}

/// One line of output as HTML.
pub fn to_html(line: &str) -> String {
    // What a terminal would show last: the text after the last carriage return.
    let line = line.rsplit('\r').find(|s| !s.is_empty()).unwrap_or("");
    let mut out = String::with_capacity(line.len() + 16);
    let mut style = Style::default();
    let mut open = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            escape_into(&mut out, c);
            continue;
        }
        if chars.peek() != Some(&'[') {
            // A lone ESC or another kind of escape: drop the ESC and the next character.
            chars.next();
            continue;
        }
        chars.next();
        let mut body = String::new();
        let mut end = None;
        for c in chars.by_ref() {
            if ('\x40'..='\x7e').contains(&c) {
                end = Some(c);
                break;
            }
            body.push(c);
        }
        if end != Some('m') {
            continue; // cursor movement, erase…: nothing to show
        }
        let params: Vec<u16> = if body.is_empty() {
            Vec::new()
        } else {
            body.split([';', ':'])
                .map(|p| p.parse().unwrap_or(0))
                .collect()
        };
        let mut next = style;
        next.apply(&params);
        if next != style {
            if open {
                out.push_str("</span>");
                open = false;
            }
            if next != Style::default() {
                next.open(&mut out);
                open = true;
            }
            style = next;
        }
    }
    if open {
        out.push_str("</span>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::to_html;

    #[test]
    fn colours_become_classes_and_text_is_escaped() {
        assert_eq!(
            to_html("\x1b[1;31mERROR\x1b[0m <b>&</b>"),
            "<span class=\"af1 ab\">ERROR</span> &lt;b&gt;&amp;&lt;/b&gt;"
        );
        assert_eq!(
            to_html("\x1b[92mok\x1b[39m"),
            "<span class=\"af10\">ok</span>"
        );
        assert_eq!(
            to_html("\x1b[38;2;255;0;128mpink\x1b[m"),
            "<span style=\"color:#ff0080\">pink</span>"
        );
        assert_eq!(
            to_html("\x1b[38;5;196mred"),
            "<span style=\"color:#ff0000\">red</span>"
        );
    }

    #[test]
    fn control_sequences_and_redraws_leave_what_a_terminal_shows() {
        assert_eq!(to_html("10%\r50%\r100%\x1b[K"), "100%");
        assert_eq!(to_html("a\x1b[2Jb\x07c"), "abc");
        assert_eq!(to_html("unterminated \x1b[31"), "unterminated ");
        assert_eq!(to_html(""), "");
    }
}
