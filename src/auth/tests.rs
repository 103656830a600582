use super::*;
use quiver_protocol::cmd::actions::{CONSUME, CREATE, DESCRIBE, SEND};

const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));

const CHEAP: Params = Params {
    m_kib: 64,
    t: 1,
    p: 1,
};

fn open(dir: &Path) -> Auth {
    Auth::open(&AuthConfig::default(), dir, Clock::system()).unwrap()
}

fn wire(password: &str) -> cmd::WireVerifier {
    let v = Verifier::new(password, CHEAP).unwrap();
    cmd::WireVerifier {
        salt: v.salt,
        m_kib: CHEAP.m_kib,
        t: CHEAP.t,
        p: CHEAP.p,
        stored_key: v.stored_key,
        server_key: v.server_key,
    }
}

async fn create(a: &Auth, name: &str, role: Role) {
    a.manage(Request::UserCreate(cmd::UserCreate {
        name: name.into(),
        role,
        verifier: wire("pw"),
    }))
    .await
    .unwrap();
}

fn rule(resource: &str, actions: u16, decision: Decision, source: &str) -> cmd::AclRule {
    AclRule {
        resource: resource.into(),
        actions,
        decision,
        source: source.into(),
    }
}

async fn grant(a: &Auth, user: &str, r: cmd::AclRule) -> Result<Response, Refused> {
    a.manage(Request::AclGrant(cmd::AclGrant {
        user: user.into(),
        rule: r,
    }))
    .await
}

fn caller(user: &str, ip: [u8; 4]) -> Caller {
    Caller {
        who: Who::User(Arc::from(user)),
        remote: SocketAddr::from((ip, 5000)),
    }
}

fn topic(actions: u16, t: &str) -> Need {
    Need {
        actions,
        resource: Resource::topic(t),
    }
}

/// Runs the client's side of the handshake against `a`.
fn login(a: &Auth, l: &mut Login, user: &str, password: &str) -> Result<(), Refused> {
    let start = cmd::AuthStart {
        user: user.into(),
        client_nonce: scram::random(),
    };
    let reply = a.start(l, &start, HERE)?;
    let params = Params {
        m_kib: reply.m_kib,
        t: reply.t,
        p: reply.p,
    };
    let salted = scram::salted_password(password, &reply.salt, params).unwrap();
    let am = scram::auth_message_of(&start, &reply);
    let fin = a.finish(
        l,
        &cmd::AuthFinish {
            proof: scram::client_proof(&salted, &am),
        },
        HERE,
    )?;
    assert_eq!(
        fin.server_signature,
        scram::hmac(&scram::server_key(&salted), &am),
        "the broker proves it holds the verifier"
    );
    Ok(())
}

#[tokio::test]
async fn before_the_first_user_only_this_machine_is_served_and_the_first_user_is_super() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    assert!(!a.enforced());
    let anon = |ip: [u8; 4]| Caller {
        who: Who::Anonymous,
        remote: SocketAddr::from((ip, 1)),
    };
    a.check(&anon([127, 0, 0, 1]), &[topic(SEND, "orders")])
        .unwrap();
    let e = a
        .check(&anon([10, 0, 0, 1]), &[topic(SEND, "orders")])
        .unwrap_err();
    assert_eq!(e.status, Status::AccessDenied);
    let e = a
        .manage(Request::UserCreate(cmd::UserCreate {
            name: "alice".into(),
            role: Role::Normal,
            verifier: wire("pw"),
        }))
        .await
        .unwrap_err();
    assert!(e.message.contains("first user must be a super user"), "{e}");
    create(&a, "root", Role::Super).await;
    assert!(a.enforced());
    let e = a
        .check(&anon([127, 0, 0, 1]), &[topic(SEND, "orders")])
        .unwrap_err();
    assert!(e.message.contains("requires a user"), "{e}");
}

#[tokio::test]
async fn deny_wins_prefixes_match_and_sources_limit() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    create(&a, "root", Role::Super).await;
    create(&a, "alice", Role::Normal).await;
    let here = caller("alice", [10, 1, 2, 3]);
    // Nothing is allowed by default.
    assert!(a.check(&here, &[topic(SEND, "orders")]).is_err());
    grant(
        &a,
        "alice",
        rule("topic:orders.*", SEND | CONSUME, Decision::Allow, ""),
    )
    .await
    .unwrap();
    a.check(&here, &[topic(SEND, "orders.eu")]).unwrap();
    assert!(a.check(&here, &[topic(SEND, "orders")]).is_err());
    assert!(a.check(&here, &[topic(CREATE, "orders.eu")]).is_err());
    // A deny on one topic of the prefix wins over the allow.
    grant(
        &a,
        "alice",
        rule("topic:orders.secret", SEND, Decision::Deny, ""),
    )
    .await
    .unwrap();
    let e = a.check(&here, &[topic(SEND, "orders.secret")]).unwrap_err();
    assert_eq!(
        e.message,
        r#"user "alice" may not send on topic:orders.secret"#
    );
    a.check(&here, &[topic(CONSUME, "orders.secret")]).unwrap();
    // Any one of several actions is enough (a route needs any right on the topic).
    a.check(&here, &[topic(SEND | DESCRIBE, "orders.us")])
        .unwrap();
    // Sources: an allow from 192.168.0.0/16 only.
    grant(
        &a,
        "alice",
        rule("group:billing", CONSUME, Decision::Allow, "192.168.0.0/16"),
    )
    .await
    .unwrap();
    let g = Need {
        actions: CONSUME,
        resource: Resource::Group("billing".into()),
    };
    assert!(a.check(&here, std::slice::from_ref(&g)).is_err());
    a.check(&caller("alice", [192, 168, 4, 4]), &[g]).unwrap();
    // A super user needs no rule.
    a.check(&caller("root", [10, 9, 9, 9]), &[topic(CREATE, "x")])
        .unwrap();
    // Bad rules are refused with what to write.
    for (r, says) in [
        (rule("orders", SEND, Decision::Allow, ""), "topic:NAME"),
        (rule("topic:a*b", SEND, Decision::Allow, ""), "topic:NAME"),
        (rule("topic:a", 0, Decision::Allow, ""), "actions"),
        (rule("topic:a", SEND, Decision::Allow, "10.0.0/8"), "CIDR"),
    ] {
        let e = grant(&a, "alice", r).await.unwrap_err();
        assert!(e.message.contains(says), "{e}");
    }
}

#[tokio::test]
async fn rules_and_users_survive_a_restart_and_revoke_narrows() {
    let dir = tempfile::tempdir().unwrap();
    {
        let a = open(dir.path());
        create(&a, "root", Role::Super).await;
        create(&a, "bob", Role::Normal).await;
        grant(
            &a,
            "bob",
            rule("topic:t", SEND | CONSUME, Decision::Allow, "::1"),
        )
        .await
        .unwrap();
    }
    let a = open(dir.path());
    assert_eq!(a.user_count(), 2);
    let bob = Caller {
        who: Who::User(Arc::from("bob")),
        remote: "[::1]:9".parse().unwrap(),
    };
    a.check(&bob, &[topic(CONSUME, "t")]).unwrap();
    a.manage(Request::AclRevoke(cmd::AclRevoke {
        user: "bob".into(),
        rule: rule("topic:t", CONSUME, Decision::Allow, "::1"),
    }))
    .await
    .unwrap();
    assert!(a.check(&bob, &[topic(CONSUME, "t")]).is_err());
    a.check(&bob, &[topic(SEND, "t")]).unwrap();
    // The last super user cannot be deleted while others exist.
    let e = a
        .manage(Request::UserDelete(cmd::UserDelete {
            name: "root".into(),
        }))
        .await
        .unwrap_err();
    assert!(e.message.contains("last super user"), "{e}");
    let json = match a
        .manage(Request::AclList(cmd::AclList { user: "bob".into() }))
        .await
        .unwrap()
    {
        Response::AclList(j) => j.json,
        other => panic!("{other:?}"),
    };
    assert!(json.contains(r#""actions":"send""#), "{json}");
    assert!(json.contains(r#""source":"::1/128""#), "{json}");
}

#[tokio::test]
async fn wrong_password_unknown_user_and_replayed_proof_fail_alike() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    create(&a, "root", Role::Super).await;
    let mut l = Login::default();
    login(&a, &mut l, "root", "pw").unwrap();
    assert_eq!(l.user().map(|u| &**u), Some("root"));

    let mut l = Login::default();
    let wrong = login(&a, &mut l, "root", "nope").unwrap_err();
    let unknown = login(&a, &mut l, "nobody", "pw").unwrap_err();
    assert_eq!(wrong, unknown);
    assert_eq!(wrong.status, Status::AuthenticationFailed);
    assert!(l.user().is_none());

    // An unknown user's salt is the same every time (it cannot be told from a real one by
    // asking twice).
    let s1 = a
        .start(
            &mut Login::default(),
            &cmd::AuthStart {
                user: "ghost".into(),
                client_nonce: [1; 32],
            },
            HERE,
        )
        .unwrap();
    let s2 = a
        .start(
            &mut Login::default(),
            &cmd::AuthStart {
                user: "ghost".into(),
                client_nonce: [2; 32],
            },
            HERE,
        )
        .unwrap();
    assert_eq!(s1.salt, s2.salt);
    assert_ne!(s1.server_nonce, s2.server_nonce);

    // A proof recorded from a good login is refused on a new handshake, and a second
    // AuthFinish without a new AuthStart is refused too.
    let mut l = Login::default();
    let start = cmd::AuthStart {
        user: "root".into(),
        client_nonce: [9; 32],
    };
    let reply = a.start(&mut l, &start, HERE).unwrap();
    let salted = scram::salted_password(
        "pw",
        &reply.salt,
        Params {
            m_kib: reply.m_kib,
            t: reply.t,
            p: reply.p,
        },
    )
    .unwrap();
    let proof = scram::client_proof(&salted, &scram::auth_message_of(&start, &reply));
    a.finish(&mut l, &cmd::AuthFinish { proof }, HERE).unwrap();
    let again = a
        .finish(&mut l, &cmd::AuthFinish { proof }, HERE)
        .unwrap_err();
    assert_eq!(again, wrong);
    let mut other = Login::default();
    a.start(&mut other, &start, HERE).unwrap();
    let replayed = a
        .finish(&mut other, &cmd::AuthFinish { proof }, HERE)
        .unwrap_err();
    assert_eq!(replayed, wrong);
}

#[test]
fn a_damaged_file_stops_the_start_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("auth.json"), b"{not json").unwrap();
    let e = Auth::open(&AuthConfig::default(), dir.path(), Clock::system()).unwrap_err();
    assert!(format!("{e:#}").contains("is damaged"), "{e:#}");
}

#[tokio::test]
async fn an_address_with_too_many_failed_logins_waits_a_minute_whatever_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let time = crate::clock::ManualClock::starting_now();
    let a = Auth::open(&AuthConfig::default(), dir.path(), time.clock()).unwrap();
    create(&a, "root", Role::Super).await;
    // Four connections of five wrong guesses each: twenty failures from one address.
    for _ in 0..4 {
        let mut l = Login::default();
        for _ in 0..5 {
            assert!(login(&a, &mut l, "root", "guess").is_err());
        }
    }
    let e = login(&a, &mut Login::default(), "root", "pw").unwrap_err();
    assert!(
        e.message.contains("failed logins from this address"),
        "{e:?}"
    );
    assert!(
        a.check_password("root", "pw", HERE).is_err(),
        "the console too"
    );
    // Another address is not affected; after the minute this one may try again.
    let elsewhere = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 8));
    a.check_password("root", "pw", elsewhere).unwrap();
    time.advance(std::time::Duration::from_secs(60));
    login(&a, &mut Login::default(), "root", "pw").unwrap();
}

/// Two cluster nodes' users, stored through one controller state machine (the real
/// `ClusterState::apply` of `SetAuth`); neither polls, so each change is made on whatever
/// the node last saw.
#[tokio::test(start_paused = true)]
async fn a_change_another_node_made_first_is_made_again_on_the_newer_users() {
    use crate::cluster::state::{ClusterState, Command, Reply};
    let controller = Arc::new(std::sync::Mutex::new(ClusterState::default()));
    let publish = || -> Publish {
        let controller = controller.clone();
        Arc::new(move |expect, json| {
            let controller = controller.clone();
            Box::pin(async move {
                let mut state = controller.lock().unwrap();
                match state.apply(&Command::SetAuth { expect, json }) {
                    Reply::Ok => Ok(None),
                    _ => Ok(Some((state.auth.version, state.auth.json.clone()))),
                }
            })
        })
    };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (one, two) = (open(d1.path()), open(d2.path()));
    one.attach_cluster(publish());
    two.attach_cluster(publish());

    create(&one, "root", Role::Super).await;
    // Node two has not seen root: its change is refused by the controller, made again on
    // the newer users, and stored; it keeps root.
    create(&two, "ops", Role::Super).await;
    let names = |a: &Auth| a.snapshot().users.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&two), ["ops", "root"]);
    assert_eq!(two.cluster_version(), 2);
    // A change whose checks fail on the newer users is refused for that, not as busy.
    let e = one
        .manage(Request::UserCreate(cmd::UserCreate {
            name: "ops".into(),
            role: Role::Normal,
            verifier: wire("pw"),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.status, Status::UserExists, "{}", e.message);
    assert_eq!(names(&one), ["ops", "root"]);
    let stored = controller.lock().unwrap().auth.version;
    assert_eq!(stored, 2, "the refused change stored nothing");
    // And a node whose own copy lags behind what it reads gives up after a few attempts.
    let lagging = tempfile::tempdir().unwrap();
    let three = open(lagging.path());
    three.attach_cluster(Arc::new(|_, _| {
        Box::pin(async { Ok(Some((0, String::new()))) })
    }));
    let e = three
        .manage(Request::UserCreate(cmd::UserCreate {
            name: "root".into(),
            role: Role::Super,
            verifier: wire("pw"),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.status, Status::Busy, "{}", e.message);
}

/// What the audit log writes: refusals and allowed changes, not plain sends nor cluster
/// nodes' requests.
#[test]
fn the_audit_log_has_refusals_and_changes_only() {
    use quiver_protocol::Command;
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    let alice = caller("alice", [10, 0, 0, 8]);
    let member = Caller {
        who: Who::Member,
        remote: SocketAddr::from(([10, 0, 0, 2], 1)),
    };
    let orders = [topic(SEND, "orders")];
    let create = [topic(CREATE, "orders")];
    tracing::subscriber::with_default(subscriber, || {
        a.audit_request(&alice, Command::Send, &orders, false, None);
        a.audit_request(&member, Command::TopicCreate, &create, true, None);
        a.audit_request(&alice, Command::TopicCreate, &create, true, None);
        a.audit_request(
            &alice,
            Command::Send,
            &orders,
            false,
            Some("may not send\nforged"),
        );
    });
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let written: Vec<&str> = text.lines().collect();
    assert_eq!(written.len(), 2, "{text}");
    assert!(
        written[0].contains(r#"outcome="allowed" who="alice" from=10.0.0.8 command="TopicCreate" resources="topic:orders""#),
        "{text}"
    );
    // A reason with a line break stays on its line, escaped.
    assert!(
        written[1].contains(r#"outcome="denied""#)
            && written[1].contains(r#"reason="may not send\nforged""#),
        "{text}"
    );
}

/// AuthStarts made on many connections before the first failure do not each get a guess
/// checked: once the address is over its limit, proofs are refused unchecked.
#[tokio::test]
async fn started_logins_do_not_outrun_the_address_limit() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    create(&a, "root", Role::Super).await;
    let started: Vec<(Login, cmd::AuthStart, cmd::AuthStartReply)> = (0..30)
        .map(|_| {
            let mut l = Login::default();
            let start = cmd::AuthStart {
                user: "root".into(),
                client_nonce: scram::random(),
            };
            let reply = a.start(&mut l, &start, HERE).unwrap();
            (l, start, reply)
        })
        .collect();
    let mut refused_unchecked = 0;
    for (i, (mut l, start, reply)) in started.into_iter().enumerate() {
        let params = Params {
            m_kib: reply.m_kib,
            t: reply.t,
            p: reply.p,
        };
        // Wrong guesses, then the right password on the last connection.
        let password = if i == 29 { "pw" } else { "guess" };
        let salted = scram::salted_password(password, &reply.salt, params).unwrap();
        let proof = scram::client_proof(&salted, &scram::auth_message_of(&start, &reply));
        let e = a
            .finish(&mut l, &cmd::AuthFinish { proof }, HERE)
            .unwrap_err();
        if e.message.contains("failed logins from this address") {
            refused_unchecked += 1;
        }
    }
    assert_eq!(refused_unchecked, 30 - throttle::LIMIT as usize);
    // Names no user can have are refused at once and not kept.
    let mut l = Login::default();
    let long = cmd::AuthStart {
        user: "x".repeat(4096),
        client_nonce: scram::random(),
    };
    assert!(a.start(&mut l, &long, IpAddr::from([10, 9, 9, 9])).is_err());
    assert!(l.pending.is_none());
}
