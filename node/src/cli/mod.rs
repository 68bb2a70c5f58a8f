//! The `vmail` command line: flags, the shared context, and dispatch.
//!
//! Over 600 lines because clap's derive keeps every subcommand's flags and
//! help text in these enums, which `vmail completions` and `vmail man`
//! read whole; issue 21 added `--json`, the completions and the man pages.
//! Moving the enums to a `flags.rs` apart from dispatch is the owed split.

#[macro_use]
pub(crate) mod output;

mod account;
mod devnet;
mod docs;
mod inbox;
mod node;
mod policy;
mod sent;
mod sip;
mod voicemail;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use vmail_node::auth_client::{AuthClient, LoginSession, PolicyMode, SenderVisibility};
use vmail_node::core::erasure::Redundancy;
use vmail_node::home::{self, AuthOverrides};
use vmail_node::keystore::Keystore;
use zeroize::Zeroizing;

/// Shortest password `vmail account register` accepts.
const MIN_PASSWORD_LEN: usize = 8;

/// vmail: secure voicemail for peer-to-peer telephony.
#[derive(Debug, Parser)]
#[command(name = "vmail", version)]
pub(crate) struct Cli {
    /// The vmail home: config, keystore and node data live here.
    #[arg(long, global = true, env = "VMAIL_HOME")]
    home: Option<PathBuf>,
    /// Auth server URL(s), comma-separated, e.g. https://127.0.0.1:7443.
    #[arg(long, global = true, env = "VMAIL_AUTH")]
    auth: Option<String>,
    /// The cluster CA certificate (PEM) that auth servers present.
    #[arg(long, global = true, env = "VMAIL_CA")]
    ca: Option<PathBuf>,
    /// The cluster public key (hex) that signs user certificates.
    #[arg(long, global = true, env = "VMAIL_CLUSTER_KEY")]
    cluster_key: Option<String>,
    /// The auth group's threshold key (hex): every certificate must then
    /// carry the group's signature too (docs/THRESHOLD.md).
    #[arg(long, global = true, env = "VMAIL_GROUP_KEY")]
    group_key: Option<String>,
    /// Read auth settings from this file instead of HOME/config.toml (for
    /// example the client.toml an auth group publishes).
    #[arg(long, global = true, env = "VMAIL_AUTH_CONFIG")]
    auth_config: Option<PathBuf>,
    /// Read the password from this file instead of prompting.
    #[arg(long, global = true)]
    password_file: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text (errors: a JSON
    /// object on stderr); docs/OPERATIONS.md gives each command's shape.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Whether --json was given.
    pub(crate) fn json(&self) -> bool {
        self.json
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage your account.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Log in: negotiate a master key and get your identity key certified.
    Login {
        /// Your username.
        user: String,
        /// Make a new identity key and have it certified (key rotation).
        #[arg(long)]
        rotate_identity: bool,
    },
    /// Log out: revoke the session token and master key on the server.
    Logout,
    /// Show who you are logged in as.
    Whoami,
    /// List voicemails waiting for you.
    Inbox {
        /// Keep listening and print new voicemails as they arrive.
        #[arg(long)]
        watch: bool,
    },
    /// Leave a voicemail: encrypt once, store shards on peers, deposit the key.
    Leave {
        /// Recipients, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        /// The voicemail (a WAV file, or any file).
        file: PathBuf,
        /// Store R whole copies instead of erasure-coded shards.
        #[arg(long, conflicts_with = "erasure")]
        replicas: Option<u8>,
        /// Reed-Solomon K/N: N shards, any K of which rebuild it (default:
        /// placement.redundancy in node.toml, 4/8).
        #[arg(long, value_name = "K/N", value_parser = parse_erasure)]
        erasure: Option<Redundancy>,
        /// Hide who you are from the recipients (only those who accept
        /// anonymous voicemail take it; the auth group still knows you and
        /// counts it against your allowances).
        #[arg(long)]
        anonymous: bool,
    },
    /// Fetch voicemail: find it in the overlay, check, decrypt, save, ack.
    Fetch {
        /// The voicemail id, as `vmail inbox` shows it.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Fetch every waiting voicemail.
        #[arg(long)]
        all: bool,
        /// Directory to save into (default: the current one).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// What happened to the voicemail you left: each recipient's state
    /// (pending, delivered, expired unread, recalled).
    Sent,
    /// Withdraw a voicemail you left that not every recipient fetched; its
    /// shards are deleted from their holders.
    Recall {
        /// The voicemail id, as `vmail leave` and `vmail sent` show it.
        id: String,
    },
    /// Decline a voicemail left for you without fetching it (it counts as
    /// your ack).
    Discard {
        /// The voicemail id, as `vmail inbox` shows it.
        id: String,
    },
    /// Who may leave you voicemail: show or change your policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Your contacts: senders your policy always accepts.
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// Refuse voicemail from these senders.
    Block {
        /// Usernames to block.
        #[arg(required = true, value_name = "USER")]
        users: Vec<String>,
    },
    /// Accept voicemail from these blocked senders again (as your policy
    /// allows).
    Unblock {
        /// Usernames to unblock.
        #[arg(required = true, value_name = "USER")]
        users: Vec<String>,
    },
    /// Report a voicemail left for you as spam: its sender is blocked (a
    /// hidden one too, without being named) and loses standing.
    Report {
        /// The voicemail id, as `vmail inbox` shows it.
        id: String,
    },
    /// Run or inspect the peer daemon.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Your softphone: the SIP front of `vmail node run --sip ADDR`.
    #[command(subcommand)]
    Sip(SipCommand),
    /// Run the whole system locally and narrate the paper's protocol (runs
    /// `vmail-devnet demo`).
    Demo,
    /// A local network of auth servers and peers in the background, and its
    /// fault drills (runs `vmail-devnet testnet`; `vmail testnet help` lists
    /// its commands).
    #[command(disable_help_flag = true)]
    Testnet {
        /// `up`, `down`, `kill-auth-leader`, `restart-auth`, `tone`, and
        /// their arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// This peer's role, its supernode, the supernode set, and its attached
    /// peers if it serves (the same as `vmail node status`).
    Status {
        /// Data dir (default: HOME/node).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Print a shell completion script, e.g. `vmail completions bash >
    /// /etc/bash_completion.d/vmail`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write man pages for vmail and each subcommand into DIR (for
    /// packaging).
    #[command(hide = true)]
    Man {
        /// The directory (made if missing); existing pages are replaced.
        dir: PathBuf,
    },
}

impl Command {
    /// The command's name as typed, for messages.
    fn name(&self) -> &'static str {
        match self {
            Self::Account(AccountCommand::Register { .. }) => "account register",
            Self::Account(AccountCommand::Set(_)) => "account set",
            Self::Login { .. } => "login",
            Self::Logout => "logout",
            Self::Whoami => "whoami",
            Self::Inbox { .. } => "inbox",
            Self::Leave { .. } => "leave",
            Self::Fetch { .. } => "fetch",
            Self::Sent => "sent",
            Self::Recall { .. } => "recall",
            Self::Discard { .. } => "discard",
            Self::Policy(_) => "policy",
            Self::Contacts(_) => "contacts",
            Self::Block { .. } => "block",
            Self::Unblock { .. } => "unblock",
            Self::Report { .. } => "report",
            Self::Node(NodeCommand::Run { .. }) => "node run",
            Self::Node(NodeCommand::Status { .. }) => "node status",
            Self::Node(NodeCommand::Health { .. }) => "node health",
            Self::Sip(SipCommand::SetPassword { .. }) => "sip set-password",
            Self::Sip(SipCommand::Status { .. }) => "sip status",
            Self::Demo => "demo",
            Self::Testnet { .. } => "testnet",
            Self::Status { .. } => "status",
            Self::Completions { .. } => "completions",
            Self::Man { .. } => "man",
        }
    }

    /// Whether the command has a `--json` form: those that report data.
    /// A daemon, a prompt, a narration or a generated file has none.
    fn has_json(&self) -> bool {
        !matches!(
            self,
            Self::Node(NodeCommand::Run { .. })
                | Self::Sip(SipCommand::SetPassword { .. })
                | Self::Demo
                | Self::Testnet { .. }
                | Self::Completions { .. }
                | Self::Man { .. }
        )
    }
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Your mode, whether you accept anonymous voicemail, and how many
    /// contacts and blocked senders you have of how many allowed.
    Show,
    /// Change the mode, the anonymous opt-in, or both. Modes: `anyone`
    /// (strangers are flagged, not limited), `contacts` (only contacts),
    /// `contacts+first-contact` (contacts, and strangers once under
    /// first-contact limits; the default).
    Set {
        /// anyone, contacts or contacts+first-contact; omit to keep it.
        #[arg(value_name = "MODE", value_parser = parse_policy_mode)]
        mode: Option<PolicyMode>,
        /// Accept voicemail from senders who hide who they are.
        #[arg(long, conflicts_with = "refuse_anonymous")]
        accept_anonymous: bool,
        /// Refuse voicemail from senders who hide who they are.
        #[arg(long)]
        refuse_anonymous: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ContactsCommand {
    /// Add contacts (registered usernames).
    Add {
        /// Usernames to add.
        #[arg(required = true, value_name = "USER")]
        users: Vec<String>,
    },
    /// Remove contacts.
    Remove {
        /// Usernames to remove.
        #[arg(required = true, value_name = "USER")]
        users: Vec<String>,
    },
    /// List your contacts and blocked senders.
    List,
}

#[derive(Debug, Subcommand)]
enum SipCommand {
    /// Set the password your softphone uses to register with the peer's
    /// SIP front (not your vmail password); from --password-file,
    /// VMAIL_PASSWORD or a prompt.
    SetPassword {
        /// Data dir (default: HOME/node).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Show the SIP front's registrations, subscriptions, calls and lamp.
    Status {
        /// Data dir (default: HOME/node).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Run a peer: join the overlay, hold voicemail for others, serve the CLI.
    Run {
        /// Data dir (default: HOME/node).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Config file (default: DATA_DIR/node.toml); `vmail testnet up`
        /// exports VMAIL_NODE_CONFIG to give a daemon the testnet's
        /// election settings.
        #[arg(long, env = "VMAIL_NODE_CONFIG")]
        config: Option<PathBuf>,
        /// Serve SIP for your softphone on this UDP address, e.g.
        /// 127.0.0.1:5060 (sip.listen in node.toml); off by default.
        #[arg(long, value_name = "ADDR")]
        sip: Option<std::net::SocketAddr>,
        /// Serve the web inbox on this TCP address, e.g. 127.0.0.1:8380
        /// ([web] listen in node.toml); off by default, loopback only
        /// unless web.allow_remote. The URL to open, with this start's
        /// token, is printed and written to DATA_DIR/web.url.
        #[arg(long, value_name = "ADDR")]
        web: Option<std::net::SocketAddr>,
        /// Serve Prometheus metrics at http://ADDR/metrics, e.g.
        /// 127.0.0.1:9101 ([metrics] listen in node.toml); off by default.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Longest time to hand held objects to other peers when stopping,
        /// e.g. 30s or 2m; 0 skips it (handoff_timeout_secs in node.toml,
        /// default 30 s).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        handoff_timeout: Option<std::time::Duration>,
    },
    /// Show the running peer's id, addresses, routing table and storage.
    Status {
        /// Data dir (default: HOME/node).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Ask the running peer's gRPC health service; exits 0 if it serves
    /// (container health checks).
    Health {
        /// Data dir (default: HOME/node).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AccountCommand {
    /// Register a new user with OPAQUE; the password never leaves this machine.
    Register {
        /// The new username: 3-64 characters of a-z, 0-9, '.', '_' and '-'.
        user: String,
        /// Invite code, when the server requires one.
        #[arg(long)]
        invite: Option<String>,
    },
    /// Change a setting of your account.
    #[command(subcommand)]
    Set(AccountSetting),
}

#[derive(Debug, Subcommand)]
enum AccountSetting {
    /// How long voicemail for you may wait before it expires unread and its
    /// shards are deleted, e.g. `7d` or `36h` (at least 1h, at most the
    /// auth group's cap); `default` for the group's default. Senders see an
    /// expired voicemail as "expired unread" in `vmail sent`.
    Retention {
        /// A duration such as `7d`, or `default`.
        value: String,
    },
}

/// How often a password prompt asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// Once, to log in.
    Once,
    /// Twice, to catch a typo in a new password.
    Twice,
}

/// What every command needs: the home, its keystore, and how to reach auth.
struct Context {
    home: PathBuf,
    keystore: Keystore,
    overrides: AuthOverrides,
    password_file: Option<PathBuf>,
    /// --json: print the command's JSON document, no text or progress bars.
    json: bool,
}

impl Context {
    async fn connect(&self) -> anyhow::Result<AuthClient> {
        let target = home::auth_target(&self.home, &self.overrides)?;
        Ok(AuthClient::connect(&target).await?)
    }

    /// A client holding the saved session's token, and that session.
    async fn logged_in(&self) -> anyhow::Result<(AuthClient, LoginSession)> {
        let session = self
            .keystore
            .session()?
            .context("not logged in: run `vmail login USER` first")?;
        let mut client = self.connect().await?;
        client.set_token(session.token);
        Ok((client, session))
    }

    /// The password from --password-file, VMAIL_PASSWORD, or a prompt.
    fn password(&self, prompt: &str, ask: Ask) -> anyhow::Result<Zeroizing<String>> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading password file {}", path.display()))?;
            return Ok(Zeroizing::new(
                text.trim_end_matches(['\r', '\n']).to_owned(),
            ));
        }
        if let Ok(p) = std::env::var("VMAIL_PASSWORD") {
            return Ok(Zeroizing::new(p));
        }
        if !std::io::stdin().is_terminal() {
            bail!(
                "no password given and no terminal to ask on: use --password-file FILE or set VMAIL_PASSWORD"
            );
        }
        let first = Zeroizing::new(rpassword::prompt_password(prompt)?);
        if ask == Ask::Twice {
            let again = Zeroizing::new(rpassword::prompt_password("Repeat password: ")?);
            if *first != *again {
                bail!("the passwords do not match; nothing was registered");
            }
        }
        Ok(first)
    }
}

/// Runs one command.
pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.json && !cli.command.has_json() {
        return Err(output::UsageError(format!(
            "`vmail {}` has no JSON output: run it without --json (docs/OPERATIONS.md, \"JSON output: vmail\", lists the commands that have one)",
            cli.command.name()
        ))
        .into());
    }
    match cli.command {
        Command::Completions { shell } => return docs::completions(shell),
        Command::Man { dir } => return docs::man(&dir),
        Command::Demo => return Err(devnet::exec(&["demo".into()])),
        Command::Testnet { args } => {
            let all: Vec<OsString> = std::iter::once("testnet".into()).chain(args).collect();
            return Err(devnet::exec(&all));
        }
        _ => {}
    }
    let home = home::resolve_home(cli.home)?;
    let ctx = Context {
        keystore: Keystore::new(&home),
        home,
        overrides: AuthOverrides {
            auth: cli.auth,
            ca: cli.ca,
            cluster_key: cli.cluster_key,
            group_key: cli.group_key,
            auth_config: cli.auth_config,
        },
        password_file: cli.password_file,
        json: cli.json,
    };
    match cli.command {
        Command::Account(AccountCommand::Register { user, invite }) => {
            account::register(&ctx, &user, invite.as_deref()).await
        }
        Command::Login {
            user,
            rotate_identity,
        } => account::login(&ctx, &user, rotate_identity).await,
        Command::Account(AccountCommand::Set(AccountSetting::Retention { value })) => {
            account::set_retention(&ctx, &value).await
        }
        Command::Logout => account::logout(&ctx).await,
        Command::Sent => sent::sent(&ctx).await,
        Command::Recall { id } => sent::recall(&ctx, &id).await,
        Command::Discard { id } => sent::discard(&ctx, &id).await,
        Command::Whoami => account::whoami(&ctx).await,
        Command::Inbox { watch } => inbox::run(&ctx, watch).await,
        Command::Leave {
            to,
            file,
            replicas,
            erasure,
            anonymous,
        } => {
            let redundancy = match replicas {
                Some(r) => Some(Redundancy::Replicas(r).validate()?),
                None => erasure,
            };
            let sender = if anonymous {
                SenderVisibility::Hidden
            } else {
                SenderVisibility::Shown
            };
            voicemail::leave(&ctx, &to, &file, redundancy, sender).await
        }
        Command::Policy(PolicyCommand::Show) => policy::show(&ctx).await,
        Command::Policy(PolicyCommand::Set {
            mode,
            accept_anonymous,
            refuse_anonymous,
        }) => {
            let change = policy::policy_change(mode, accept_anonymous, refuse_anonymous)?;
            policy::set(&ctx, change).await
        }
        Command::Contacts(ContactsCommand::Add { users }) => {
            policy::edit(&ctx, policy::List::Contacts, policy::Edit::Add, &users).await
        }
        Command::Contacts(ContactsCommand::Remove { users }) => {
            policy::edit(&ctx, policy::List::Contacts, policy::Edit::Remove, &users).await
        }
        Command::Contacts(ContactsCommand::List) => policy::list_contacts(&ctx).await,
        Command::Block { users } => {
            policy::edit(&ctx, policy::List::Blocked, policy::Edit::Add, &users).await
        }
        Command::Unblock { users } => {
            policy::edit(&ctx, policy::List::Blocked, policy::Edit::Remove, &users).await
        }
        Command::Report { id } => policy::report(&ctx, &id).await,
        Command::Fetch { id, all, out } => voicemail::fetch(&ctx, id, all, out).await,
        Command::Node(NodeCommand::Run {
            data_dir,
            config,
            sip,
            metrics,
            handoff_timeout,
            web,
        }) => {
            let flags = node::RunFlags {
                sip,
                web,
                metrics,
                handoff_timeout,
            };
            node::run(&ctx, data_dir, config, flags).await
        }
        Command::Sip(c) => sip::run(&ctx, c).await,
        Command::Node(NodeCommand::Status { data_dir }) | Command::Status { data_dir } => {
            node::status(&ctx, data_dir).await
        }
        Command::Node(NodeCommand::Health { data_dir }) => node::health(&ctx, data_dir).await,
        Command::Demo
        | Command::Testnet { .. }
        | Command::Completions { .. }
        | Command::Man { .. } => unreachable!("done above"),
    }
}

/// A Unix time as an RFC 3339 UTC string.
fn when(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

/// A policy mode, checked as clap parses it.
fn parse_policy_mode(s: &str) -> Result<PolicyMode, vmail_node::auth_client::BadPolicyMode> {
    s.parse()
}

/// `--erasure K/N`, checked as clap parses it.
fn parse_erasure(s: &str) -> Result<Redundancy, vmail_node::core::erasure::ErasureError> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vmail").chain(args.iter().copied()))
    }

    #[test]
    fn policy_set_takes_a_mode_and_one_anonymous_flag() {
        let cli = parse(&[
            "policy",
            "set",
            "contacts+first-contact",
            "--refuse-anonymous",
        ])
        .unwrap();
        let Command::Policy(PolicyCommand::Set {
            mode,
            accept_anonymous,
            refuse_anonymous,
        }) = cli.command
        else {
            panic!("not policy set");
        };
        assert_eq!(mode, Some(PolicyMode::ContactsFirstContact));
        assert!(!accept_anonymous && refuse_anonymous);

        let cli = parse(&["policy", "set", "--accept-anonymous"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Policy(PolicyCommand::Set {
                mode: None,
                accept_anonymous: true,
                ..
            })
        ));
        for mode in ["anyone", "contacts"] {
            assert!(parse(&["policy", "set", mode]).is_ok(), "{mode}");
        }
        let err = parse(&["policy", "set", "friends"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a policy mode"), "{err}");
        let err =
            parse(&["policy", "set", "--accept-anonymous", "--refuse-anonymous"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn list_commands_need_a_user() {
        for args in [
            &["contacts", "add"][..],
            &["contacts", "remove"],
            &["block"],
            &["unblock"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{args:?}"
            );
        }
        assert!(parse(&["block", "bob", "carol"]).is_ok());
        assert!(parse(&["contacts", "list"]).is_ok());
    }

    #[test]
    fn leave_takes_anonymous() {
        let cli = parse(&["leave", "--to", "bob", "--anonymous", "msg.wav"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Leave {
                anonymous: true,
                ..
            }
        ));
        let cli = parse(&["leave", "--to", "bob", "msg.wav"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Leave {
                anonymous: false,
                ..
            }
        ));
    }
}
