//! IoT Edge, as IoT Hub and the Edge runtime read it (edge.md): deployment manifests (build
//! and validate), edgeHub routes, target conditions, which deployments apply to which device,
//! and a device's state with its deployment.

pub mod agent;
pub mod assign;
pub mod condition;
pub mod image;
pub mod manifest;
pub mod route;
pub mod state;

/// Reads the string literal whose opening quote (`'` or `"`) is at `chars[start]`: the escapes
/// `\'`, `\"`, `\\` and `\uXXXX`, and with `doubled` a doubled quote for one quote (twin
/// queries). Gives the text and the index after the closing quote, or the 0-based index of the
/// error and what is wrong.
fn scan_string(
    chars: &[char],
    start: usize,
    doubled: bool,
) -> Result<(String, usize), (usize, String)> {
    let quote = chars[start];
    let mut s = String::new();
    let mut j = start + 1;
    loop {
        match chars.get(j) {
            None => return Err((start, format!("the string opened here has no closing {quote}"))),
            Some(&q) if q == quote && doubled && chars.get(j + 1) == Some(&quote) => {
                s.push(quote);
                j += 2;
            }
            Some(&q) if q == quote => return Ok((s, j + 1)),
            Some('\\') => {
                match chars.get(j + 1) {
                    Some('\'') => s.push('\''),
                    Some('"') => s.push('"'),
                    Some('\\') => s.push('\\'),
                    Some('u') => {
                        let hex: String = chars.iter().skip(j + 2).take(4).collect();
                        let ch = (hex.len() == 4)
                            .then(|| u32::from_str_radix(&hex, 16).ok())
                            .flatten()
                            .and_then(char::from_u32)
                            .ok_or_else(|| {
                                (j, "`\\u` needs four hex digits of a character".to_owned())
                            })?;
                        s.push(ch);
                        j += 4;
                    }
                    _ => {
                        let doubled = if doubled { ", or a doubled quote" } else { "" };
                        return Err((
                            j,
                            format!("unknown escape; strings take \\' \\\" \\\\ \\uXXXX{doubled}"),
                        ));
                    }
                }
                j += 2;
            }
            Some(&ch) => {
                s.push(ch);
                j += 1;
            }
        }
    }
}
