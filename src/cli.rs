//! Command line: one binary, several roles.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "gantry",
    version,
    about = "One secure, observable endpoint in front of many MCP servers"
)]
pub struct Cli {
    /// Configuration file (default: ./gantry.toml when present). Also GANTRY_CONFIG.
    #[arg(long, short, global = true, env = "GANTRY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// All-in-one on embedded defaults, with the built-in demo upstream when no server is
    /// configured (the default command)
    Serve(ServeArgs),
    /// The control plane alone: /api (tenants, users, API keys, status)
    Api(ServeArgs),
    /// The MCP data plane alone (production role; API keys from database.url or auth.api_keys)
    Gateway(ServeArgs),
    /// Serve one stdio MCP server over Streamable HTTP at /mcp, e.g.
    /// `gantry bridge --listen 0.0.0.0:8000 -- npx -y @modelcontextprotocol/server-github`
    Bridge(BridgeArgs),
    /// Apply database migrations, then exit (uses database.migrate_url when set)
    Migrate,
    /// Operator tasks without the API: the first administrator, tenants, API keys
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Exit 0 when the local instance is ready, 1 otherwise (for container healthchecks)
    Healthcheck {
        /// Address to probe (default: server.listen from configuration)
        #[arg(long)]
        addr: Option<String>,
    },
    /// Run the built-in demo MCP server on stdio (echo, add, time, key-value store)
    DemoUpstream {
        /// Serve over Streamable HTTP at http://ADDR/mcp instead of stdio
        #[arg(long, value_name = "ADDR")]
        http: Option<std::net::SocketAddr>,
    },
    /// Check the configuration and reach every dependency it names, one line per check;
    /// exits 1 when a check fails
    Doctor,
    /// Generate an API key and print it with the SHA-256 digest to put in auth.api_keys
    Keygen,
    /// Print the version and the MCP protocol versions spoken
    Version,
}

#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// Listen address, overriding server.listen (e.g. 127.0.0.1:0 for a random port)
    #[arg(long)]
    pub listen: Option<String>,
    /// Write the bound address to this file once ready (for supervisors and tests)
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BridgeArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Name of the server (in logs and metrics); default: the command's file name, or
    /// for a launcher (npx, uvx, python, node …) the package or script it runs
    #[arg(long)]
    pub name: Option<String>,
    /// Accept callers without an API key. Only for a private network that nothing
    /// untrusted can reach.
    #[arg(long)]
    pub no_auth: bool,
    /// The stdio server's command and arguments
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Programs that run the server named by their first argument that is not an option.
const LAUNCHERS: &[&str] = &[
    "npx", "bunx", "uvx", "pipx", "node", "python", "python3", "deno", "bun", "gantry",
];

impl BridgeArgs {
    /// The server's name: `--name`, else what the command runs, as a name gantry accepts.
    pub fn server_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let stem = |path: &str| {
            std::path::Path::new(path)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let program = stem(&self.command[0]);
        let run = LAUNCHERS
            .contains(&program.as_str())
            .then(|| self.command[1..].iter().find(|a| !a.starts_with('-')))
            .flatten()
            // Not a subcommand such as `deno run` or `pipx run`: what follows it.
            .and_then(|first| match first.as_str() {
                "run" | "exec" | "dlx" | "x" => self
                    .command
                    .iter()
                    .skip_while(|a| *a != first)
                    .skip(1)
                    .find(|a| !a.starts_with('-')),
                _ => Some(first),
            })
            .map(|target| package_or_script(target, stem));
        let name: String = run
            .filter(|n| !n.is_empty())
            .unwrap_or(program)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        if name.is_empty() {
            "bridged".into()
        } else {
            name
        }
    }
}

/// `@scope/server-github@1.2.3` → `server-github`; `/opt/x/server.py` → `server`.
fn package_or_script(target: &str, stem: impl Fn(&str) -> String) -> String {
    let unversioned = match target.rfind('@') {
        Some(at) if at > 0 => &target[..at],
        _ => target,
    };
    stem(unversioned.rsplit('/').next().unwrap_or(unversioned))
}

#[derive(Subcommand, Debug, Clone)]
pub enum AdminCommand {
    /// Create a user (or reset an existing user's password) and make them a member of a
    /// tenant, which is created when missing. Prints a generated password unless
    /// --password-stdin is given.
    CreateUser {
        #[arg(long)]
        email: String,
        /// Tenant slug; created when it does not exist
        #[arg(long, default_value = "default")]
        tenant: String,
        /// owner, admin, member or viewer
        #[arg(long, default_value = "owner")]
        role: String,
        /// May manage every tenant and register stdio servers
        #[arg(long)]
        platform_admin: bool,
        /// Read the password from the first line of standard input
        #[arg(long)]
        password_stdin: bool,
    },
    /// Create an API key for a tenant and print it (once)
    CreateKey {
        /// Tenant slug
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long)]
        name: String,
        /// Comma-separated: mcp, api
        #[arg(long, default_value = "mcp")]
        scopes: String,
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List tenants
    ListTenants,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_of(command: &[&str]) -> String {
        let cli = Cli::try_parse_from(
            ["gantry", "bridge", "--"]
                .into_iter()
                .chain(command.iter().copied()),
        )
        .expect("parses");
        match cli.command {
            Some(Command::Bridge(args)) => args.server_name(),
            _ => panic!("not a bridge"),
        }
    }

    #[test]
    fn a_bridge_is_named_after_what_a_launcher_runs() {
        assert_eq!(
            name_of(&["npx", "-y", "@modelcontextprotocol/server-github@2025.4.8"]),
            "server-github"
        );
        assert_eq!(name_of(&["uvx", "mcp-server-time"]), "mcp-server-time");
        assert_eq!(
            name_of(&["python3", "/opt/chatty/chatty_upstream.py"]),
            "chatty_upstream"
        );
        assert_eq!(
            name_of(&["python", "-m", "mcp_server_fetch"]),
            "mcp_server_fetch"
        );
        assert_eq!(name_of(&["deno", "run", "-A", "server.ts"]), "server");
    }

    #[test]
    fn other_commands_are_named_after_their_program() {
        assert_eq!(name_of(&["gantry", "demo-upstream"]), "demo-upstream");
        assert_eq!(
            name_of(&["/usr/local/bin/mcp-server-time"]),
            "mcp-server-time"
        );
        assert_eq!(name_of(&["npx"]), "npx", "a launcher with nothing to run");
        assert_eq!(name_of(&["./!!!"]), "bridged");
    }
}
