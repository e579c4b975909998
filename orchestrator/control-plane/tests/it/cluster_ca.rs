//! The cluster CA: one per cluster, however many servers start at once; a data dir's own CA is adopted.

use control_plane::ca::{self, CaError};
use control_plane::store::{MemoryStore, Store};
use std::sync::Arc;

#[tokio::test]
async fn servers_starting_together_on_one_store_all_get_the_same_single_ca() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let starts = dirs.iter().map(|d| {
        let store = store.clone();
        let path = d.path().to_path_buf();
        async move { ca::load_or_create(store.as_ref(), &path).await.unwrap().cert().hash() }
    });
    let hashes = futures::future::join_all(starts).await;
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "one CA for every server: {hashes:?}");
    for d in &dirs {
        let cert = std::fs::read_to_string(d.path().join(ca::CA_CERT_FILE)).unwrap();
        assert_eq!(pki::CaCert::from_pem(&cert).unwrap().hash(), hashes[0]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(d.path().join(ca::CA_KEY_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the CA key is private to its owner");
        }
    }
    // A restart reads the same CA back.
    let again = ca::load_or_create(store.as_ref(), dirs[0].path()).await.unwrap();
    assert_eq!(again.cert().hash(), hashes[0]);
}

#[tokio::test]
async fn an_operators_ca_in_the_data_dir_becomes_the_clusters_and_a_different_one_is_refused() {
    let own = pki::ClusterCa::generate("corp-ca").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(ca::CA_CERT_FILE), own.cert().pem()).unwrap();
    ca::write_private(&dir.path().join(ca::CA_KEY_FILE), own.key_pem().as_bytes()).unwrap();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let adopted = ca::load_or_create(store.as_ref(), dir.path()).await.unwrap();
    assert_eq!(adopted.cert().hash(), own.cert().hash());

    let other = tempfile::tempdir().unwrap();
    let foreign = pki::ClusterCa::generate("another-cluster").unwrap();
    std::fs::write(other.path().join(ca::CA_CERT_FILE), foreign.cert().pem()).unwrap();
    ca::write_private(&other.path().join(ca::CA_KEY_FILE), foreign.key_pem().as_bytes()).unwrap();
    let err = ca::load_or_create(store.as_ref(), other.path()).await.unwrap_err();
    assert!(matches!(err, CaError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains(&own.cert().hash()), "{err}");
}

#[cfg(unix)]
#[tokio::test]
async fn a_ca_key_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let own = pki::ClusterCa::generate("corp-ca").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(ca::CA_CERT_FILE), own.cert().pem()).unwrap();
    std::fs::write(dir.path().join(ca::CA_KEY_FILE), own.key_pem()).unwrap();
    std::fs::set_permissions(dir.path().join(ca::CA_KEY_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let err = ca::load_or_create(store.as_ref(), dir.path()).await.unwrap_err();
    assert!(matches!(err, CaError::Permissions { mode: 0o644, .. }), "{err}");
}
