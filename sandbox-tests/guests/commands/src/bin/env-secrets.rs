//! Attack: look for secrets in the environment and the arguments.
//! `env-secrets NAME...`: NAME are the variables the step declared; any
//! other variable (but `PWD`, `TMPDIR` and `SOURCE_DATE_EPOCH`, which the
//! host sets) is something the host let slip.

use hostile_commands::Attempts;

fn main() {
    let mut a = Attempts::default();
    let declared: Vec<String> = std::env::args().skip(1).collect();
    println!("args: {:?}", std::env::args().collect::<Vec<_>>());
    for (name, value) in std::env::vars() {
        if ["PWD", "TMPDIR", "SOURCE_DATE_EPOCH"].contains(&name.as_str()) || declared.contains(&name) {
            println!("declared: {name}={value}");
        } else {
            a.check::<_, String>(&format!("undeclared variable {name}"), Ok(value));
        }
    }
    a.finish();
}
