//! Store URLs (`--store`, `weft lab --store`): reading one never panics, a refusal names
//! the URL, and an accepted etcd endpoint is exactly what the connection will dial: the
//! authority of an `http://` URI, with a port, nothing lost or added.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_stores::StoreUrl;

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    match StoreUrl::parse(url) {
        Ok(StoreUrl::Etcd { endpoints }) => {
            assert!(!endpoints.is_empty());
            for e in &endpoints {
                let uri: http::Uri = format!("http://{e}")
                    .parse()
                    .unwrap_or_else(|err| panic!("endpoint {e:?} of {url:?} is no URI: {err}"));
                assert_eq!(
                    uri.authority().map(|a| a.as_str()),
                    Some(e.as_str()),
                    "{url:?}"
                );
                assert_eq!(uri.path(), "/", "{url:?}");
                assert!(uri.port_u16().is_some_and(|p| p != 0), "{url:?}");
            }
            let again = StoreUrl::parse(&format!("etcd://{}", endpoints.join(",")))
                .expect("the endpoints read back");
            assert_eq!(again, StoreUrl::Etcd { endpoints });
        }
        Ok(StoreUrl::Sled { path }) => assert!(!path.is_empty()),
        Ok(StoreUrl::Memory) => {}
        Err(e) => {
            let shown = format!("{url:?}");
            assert!(e.to_string().contains(&shown), "{e} does not name {shown}");
        }
    }
});
