//! The plugin runtime against real components, hostile ones included.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use knit::runtime::{
    CallError, Limits, LoadError, Plugin, PluginSettings, PluginSource, Registry, World, digest_of,
};
use knit_ipam_core::{AllocateError, Request};

fn slash24(count: u32) -> Request {
    Request {
        size: 256,
        excluded: vec![0..=1, 255..=255],
        count,
        ..Request::default()
    }
}

fn settings(deadline_ms: u64, memory_mib: usize, mode: &str) -> PluginSettings {
    PluginSettings {
        limits: Limits {
            deadline: Duration::from_millis(deadline_ms),
            memory_bytes: memory_mib << 20,
        },
        config: vec![("mode".into(), mode.into())],
    }
}

#[test]
fn sequential_plugin_loads_describes_and_allocates() {
    let registry = common::registry();
    let bytes = common::built_plugin("ipam_sequential");
    let plugin = registry
        .load(
            PluginSource::BuiltIn,
            "ipam-sequential",
            &bytes,
            PluginSettings::default(),
            Some(World::IpamStrategy),
        )
        .unwrap();
    assert_eq!(plugin.world, World::IpamStrategy);
    assert_eq!(plugin.info.name, "ipam-sequential");
    assert_eq!(plugin.info.version, env!("CARGO_PKG_VERSION"));
    assert!(plugin.digest.starts_with("sha256:"));
    let request = Request {
        cursor: Some(9),
        ..slash24(3)
    };
    assert_eq!(
        plugin.allocate(&request, &[]).unwrap(),
        Ok(vec![10, 11, 12])
    );
    let full = Request {
        allocated: (2..255).collect(),
        ..slash24(1)
    };
    assert_eq!(
        plugin.allocate(&full, &[]).unwrap(),
        Err(AllocateError::Exhausted(0))
    );
    let config = [("unknown".to_string(), "x".to_string())];
    assert!(matches!(
        plugin.allocate(&slash24(1), &config).unwrap(),
        Err(AllocateError::InvalidConfig(_))
    ));
}

/// The built ipam-sequential plugin under `name`, with default settings.
fn load_sequential(registry: &Registry, name: &str) -> Arc<Plugin> {
    let bytes = common::built_plugin("ipam_sequential");
    registry
        .load(
            PluginSource::BuiltIn,
            name,
            &bytes,
            PluginSettings::default(),
            None,
        )
        .unwrap()
}

#[test]
fn hostile_plugins_become_typed_errors_and_others_keep_serving() {
    let registry = common::registry();
    let good = load_sequential(&registry, "good");
    let hostile_bytes = common::built_plugin("fixture_hostile");
    let load = |mode: &str, deadline_ms, memory_mib| {
        registry
            .load(
                PluginSource::BuiltIn,
                &format!("hostile-{mode}"),
                &hostile_bytes,
                settings(deadline_ms, memory_mib, mode),
                None,
            )
            .unwrap()
    };
    let still_serving = || assert_eq!(good.allocate(&slash24(1), &[]).unwrap(), Ok(vec![2]));

    // An infinite loop is cut at the deadline, well within twice of it.
    let spin = load("spin", 200, 64);
    let started = Instant::now();
    let error = spin.allocate(&slash24(1), &[]).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, CallError::Deadline { .. }), "{error}");
    assert!(
        took < Duration::from_millis(400),
        "deadline of 200 ms took {took:?}"
    );
    assert!(
        error.to_string().contains("hostile-spin@0.1.0 (sha256:"),
        "{error}"
    );
    still_serving();

    let bomb = load("memory-bomb", 5_000, 16);
    let error = bomb.allocate(&slash24(1), &[]).unwrap_err();
    assert!(
        matches!(error, CallError::MemoryLimit { limit_bytes, .. } if limit_bytes == 16 << 20),
        "{error}"
    );
    still_serving();

    let trap = load("trap", 250, 64);
    let error = trap.allocate(&slash24(1), &[]).unwrap_err();
    assert!(matches!(error, CallError::Trap { .. }), "{error}");
    still_serving();

    for (mode, reason) in [
        ("duplicate", "twice"),
        ("out-of-range", "outside the pool"),
        ("lie-exhausted", "claims the pool is exhausted"),
    ] {
        let error = load(mode, 250, 64).allocate(&slash24(2), &[]).unwrap_err();
        assert!(
            matches!(&error, CallError::BadOutput { reason: r, .. } if r.contains(reason)),
            "{mode}: {error}"
        );
        still_serving();
    }

    // Log floods are capped, not fatal.
    assert_eq!(
        load("log-spam", 2_000, 64)
            .allocate(&slash24(1), &[])
            .unwrap(),
        Ok(vec![2])
    );

    let metrics = registry.runtime().metrics();
    assert!(metrics.calls_of("hostile-spin", "allocate") >= 1);
}

#[test]
fn a_spinning_plugin_does_not_block_calls_to_others() {
    let registry = common::registry();
    let good = load_sequential(&registry, "good");
    let spin = registry
        .load(
            PluginSource::BuiltIn,
            "spin",
            &common::built_plugin("fixture_hostile"),
            settings(1_000, 64, "spin"),
            None,
        )
        .unwrap();
    let spinner = std::thread::spawn(move || spin.allocate(&slash24(1), &[]));
    let mut served = 0;
    for _ in 0..200 {
        assert_eq!(good.allocate(&slash24(1), &[]).unwrap(), Ok(vec![2]));
        served += 1;
    }
    assert!(matches!(
        spinner.join().unwrap(),
        Err(CallError::Deadline { .. })
    ));
    assert_eq!(served, 200);
}

#[test]
fn bad_components_are_rejected_at_load() {
    let registry = common::registry();
    let load = |bytes: &[u8], expected| {
        registry.load(
            PluginSource::BuiltIn,
            "candidate",
            bytes,
            PluginSettings::default(),
            expected,
        )
    };
    let error = load(b"\0asm garbage that is not wasm", None).unwrap_err();
    assert!(matches!(error, LoadError::Compile(_)), "{error}");

    let error = load(&common::built_plugin("fixture_wrong_world"), None).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, LoadError::WrongWorld(_)), "{message}");
    assert!(
        message.contains("run") && message.contains("knit:plugin/ipam@0.1.0"),
        "{message}"
    );

    let error = load(&common::built_plugin("ipam_sequential"), None).map(|_| ());
    assert!(error.is_ok());

    let too_big = PluginSettings {
        limits: Limits {
            memory_bytes: 4 << 30,
            ..Limits::default()
        },
        config: vec![],
    };
    let error = registry
        .load(
            PluginSource::BuiltIn,
            "big",
            &common::built_plugin("ipam_sequential"),
            too_big,
            None,
        )
        .unwrap_err();
    assert!(matches!(error, LoadError::Limits(_)), "{error}");
    assert!(matches!(
        registry.get("candidate-missing"),
        Err(CallError::NotFound(_))
    ));
}

#[test]
fn stronger_sources_override_and_removal_uncovers_the_weaker() {
    let registry = common::registry();
    let mut events = registry.subscribe();
    let v1 = common::built_plugin("fixture_swap_v1");
    let v2 = common::built_plugin("fixture_swap_v2");
    registry
        .load(
            PluginSource::BuiltIn,
            "swap",
            &v1,
            PluginSettings::default(),
            None,
        )
        .unwrap();
    let object = PluginSource::Object("swap".into());
    registry
        .load(object.clone(), "swap", &v2, PluginSettings::default(), None)
        .unwrap();
    assert_eq!(registry.get("swap").unwrap().info.version, "2.0.0");
    // A weaker source loading now does not take over.
    let dir = PluginSource::Directory("/plugins/swap.wasm".into());
    registry
        .load(dir.clone(), "swap", &v1, PluginSettings::default(), None)
        .unwrap();
    assert_eq!(registry.get("swap").unwrap().info.version, "2.0.0");
    // Each serving plugin says where it came from (shown in status).
    assert_eq!(registry.get("swap").unwrap().source, Some(object.clone()));
    registry.remove(&object, "swap");
    assert_eq!(registry.get("swap").unwrap().info.version, "1.0.0");
    assert_eq!(registry.get("swap").unwrap().source, Some(dir.clone()));
    assert_eq!(dir.to_string(), "file /plugins/swap.wasm");
    registry.remove(&dir, "swap");
    registry.remove(&PluginSource::BuiltIn, "swap");
    assert!(matches!(registry.get("swap"), Err(CallError::NotFound(_))));

    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    use knit::runtime::PluginEvent::*;
    let kinds: Vec<&str> = seen
        .iter()
        .map(|e| match e {
            Serving { version, .. } => version.as_str(),
            Removed { .. } => "removed",
            Rejected { .. } => "rejected",
        })
        .collect();
    // Removing the directory entry uncovers the built-in: serving changed again.
    assert_eq!(kinds, vec!["1.0.0", "2.0.0", "1.0.0", "1.0.0", "removed"]);
}

/// What a closure logged, as text.
fn logged(run: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, run);
    String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
}

#[test]
fn a_file_named_like_a_built_in_is_a_warning_with_both_digests() {
    let registry = common::registry();
    let builtin = common::built_plugin("fixture_swap_v1");
    let file = common::built_plugin("fixture_swap_v2");
    registry
        .load(
            PluginSource::BuiltIn,
            "swap",
            &builtin,
            PluginSettings::default(),
            None,
        )
        .unwrap();
    let logs = logged(|| {
        registry
            .load(
                PluginSource::Directory("/plugins/swap.wasm".into()),
                "swap",
                &file,
                PluginSettings::default(),
                None,
            )
            .unwrap();
    });
    let warning = logs
        .lines()
        .find(|line| line.contains("WARN") && line.contains("overrides the built-in"))
        .unwrap_or_else(|| panic!("no override warning in:\n{logs}"));
    for digest in [digest_of(&builtin), digest_of(&file)] {
        assert!(warning.contains(&digest), "{digest} missing from {warning}");
    }
}
