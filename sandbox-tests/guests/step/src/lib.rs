//! A hostile `airlock:step` plugin: it attacks through the error it
//! returns, which the host records and shows. `with: { attack: huge-error }`
//! returns 50 MB of terminal escapes and newlines as its error message.

struct Hostile;

impl airlock_plugin::Step for Hostile {
    fn run(ctx: airlock_plugin::Context) -> Result<(), String> {
        match ctx.param("attack") {
            Some("huge-error") => {
                let mut message = String::from("\x1b[2J\x1b]0;pwned\x07first line\nsecond line\r\x1b[1A");
                let filler = "\x1b[31mred\u{202e}";
                while message.len() < 50_000_000 {
                    message.push_str(filler);
                }
                Err(message)
            }
            other => Err(format!("unknown attack {other:?}")),
        }
    }
}

airlock_plugin::export!(Hostile);
