//! End-to-end tests of the fake over real HTTP, checking the behaviour API-NOTES.md
//! records for authentik 2025.12.4.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

/// 5 system accounts + 50 people.
const USERS: usize = 55;

struct Answer {
    status: u16,
    content_type: String,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn detail(&self) -> (u16, Value) {
        (self.status, self.json()["detail"].clone())
    }
}

async fn start() -> FakeAuthentik {
    FakeAuthentik::start(Directory::generate(7, 50))
        .await
        .expect("bind loopback")
}

async fn get_with(fake: &FakeAuthentik, path: &str, authorization: Option<&str>) -> Answer {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let mut request = client.get(format!("{}{path}", fake.base_url()));
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    let response = request.send().await.expect("request");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().expect("ascii header").to_owned())
    };
    Answer {
        status: response.status().as_u16(),
        content_type: header("content-type").unwrap_or_default(),
        retry_after: header("retry-after"),
        body: response.text().await.expect("body"),
    }
}

async fn get(fake: &FakeAuthentik, path: &str) -> Answer {
    get_with(fake, path, Some(&format!("Bearer {SUPERUSER_TOKEN}"))).await
}

async fn get_as(fake: &FakeAuthentik, path: &str, token: &str) -> Answer {
    get_with(fake, path, Some(&format!("Bearer {token}"))).await
}

fn pks(page: &Value) -> Vec<i64> {
    page["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|u| u["pk"].as_i64().expect("pk"))
        .collect()
}

/// Asserts that `keys` occur as object keys in this order in the raw body.
fn assert_key_order(body: &str, keys: &[&str]) {
    let mut from = 0;
    for key in keys {
        let needle = format!("\"{key}\":");
        let at = body[from..]
            .find(&needle)
            .unwrap_or_else(|| panic!("{key} missing or out of order in {body}"));
        from += at + needle.len();
    }
}

#[tokio::test]
async fn pagination_object_on_first_middle_last_and_empty_pages() {
    let fake = start().await;
    let first = get(&fake, "/api/v3/core/users/?ordering=pk&page_size=20").await;
    assert_eq!(first.status, 200);
    assert!(first.body.starts_with(&format!(
        r#"{{"pagination":{{"next":2,"previous":0,"count":{USERS},"current":1,"total_pages":3,"start_index":1,"end_index":20}},"results":["#
    )));
    assert!(first.body.ends_with(r#"],"autocomplete":{}}"#));
    assert_eq!(pks(&first.json()), (1..=20).collect::<Vec<_>>());

    let middle = get(&fake, "/api/v3/core/users/?ordering=pk&page_size=20&page=2")
        .await
        .json();
    assert_eq!(
        middle["pagination"],
        json!({"next": 3, "previous": 1, "count": USERS, "current": 2, "total_pages": 3, "start_index": 21, "end_index": 40})
    );

    let last = get(&fake, "/api/v3/core/users/?ordering=pk&page_size=20&page=3")
        .await
        .json();
    assert_eq!(
        last["pagination"],
        json!({"next": 0, "previous": 2, "count": USERS, "current": 3, "total_pages": 3, "start_index": 41, "end_index": USERS})
    );
    assert_eq!(pks(&last), (41..=55).collect::<Vec<_>>());
    let by_word = get(
        &fake,
        "/api/v3/core/users/?ordering=pk&page_size=20&page=last",
    )
    .await
    .json();
    assert_eq!(by_word, last);

    let empty = get(&fake, "/api/v3/core/users/?username=nobody")
        .await
        .json();
    assert_eq!(
        empty,
        json!({"pagination": {"next": 0, "previous": 0, "count": 0, "current": 1, "total_pages": 1, "start_index": 0, "end_index": 0}, "results": [], "autocomplete": {}})
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn out_of_range_or_invalid_pages_are_404() {
    let fake = start().await;
    for page in ["4", "0", "-1", "abc", "1.0"] {
        let answer = get(
            &fake,
            &format!("/api/v3/core/users/?page_size=20&page={page}"),
        )
        .await;
        assert_eq!(
            answer.detail(),
            (404, json!("Invalid page.")),
            "page={page}"
        );
    }
    assert_eq!(
        get(&fake, "/api/v3/core/users/?username=nobody&page=2")
            .await
            .status,
        404
    );
    // DRF reads `page or 1`.
    assert_eq!(
        get(&fake, "/api/v3/core/users/?page=").await.json()["pagination"]["current"],
        1
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn page_size_defaults_to_20_and_clamps_to_100() {
    let fake = FakeAuthentik::start(Directory::generate(3, 150))
        .await
        .unwrap();
    let sizes = [
        ("", 20),
        ("page_size=1000", 100),
        ("page_size=0", 20),
        ("page_size=-5", 20),
        ("page_size=abc", 20),
        ("page_size=7", 7),
    ];
    for (query, expected) in sizes {
        let page = get(&fake, &format!("/api/v3/core/users/?{query}"))
            .await
            .json();
        assert_eq!(
            page["results"].as_array().unwrap().len(),
            expected,
            "{query}"
        );
    }
    fake.with_state(|s| s.max_page_size = 30);
    let page = get(&fake, "/api/v3/core/groups/?page_size=1000")
        .await
        .json();
    assert_eq!(page["pagination"]["end_index"], 11);
    let page = get(&fake, "/api/v3/core/users/?page_size=1000")
        .await
        .json();
    assert_eq!(page["pagination"]["total_pages"], 6);
    fake.shutdown().await;
}

#[tokio::test]
async fn paths_without_trailing_slash_or_unknown_get_the_html_404_page() {
    let fake = start().await;
    for path in [
        "/api/v3/core/users",
        "/api/v3/core/users/1",
        "/api/v3/core/nothing/",
        "/",
    ] {
        let answer = get(&fake, path).await;
        assert_eq!(answer.status, 404, "{path}");
        assert!(answer.content_type.starts_with("text/html"), "{path}");
        assert!(answer.body.starts_with("<!doctype html>") && answer.body.contains("Not Found"));
    }
    fake.shutdown().await;
}

#[tokio::test]
async fn authentication_failures_are_403_with_drf_details() {
    let fake = start().await;
    let users = "/api/v3/core/users/";
    let not_provided = json!("Authentication credentials were not provided.");
    let invalid = json!("Token invalid/expired");
    for header in [
        None,
        Some("Bearer "),
        Some("Bearer"),
        Some("Basic YWRtaW46YWRtaW4="),
    ] {
        assert_eq!(
            get_with(&fake, users, header).await.detail(),
            (403, not_provided.clone()),
            "{header:?}"
        );
    }
    for token in ["nonsense", REVOKED_TOKEN, APP_PASSWORD_TOKEN] {
        assert_eq!(
            get_as(&fake, users, token).await.detail(),
            (403, invalid.clone()),
            "{token}"
        );
        assert_eq!(
            get_as(&fake, "/api/v3/core/users/me/", token).await.status,
            403
        );
    }
    let scheme_case = get_with(&fake, users, Some(&format!("bEaReR {READER_TOKEN}"))).await;
    assert_eq!(scheme_case.status, 200);

    // A token whose user was deactivated is as good as an unknown one.
    fake.with_state(|s| {
        s.directory
            .user_by_username_mut("svc-aksync-reader")
            .unwrap()
            .is_active = false;
    });
    assert_eq!(
        get_as(&fake, users, READER_TOKEN).await.detail(),
        (403, invalid.clone())
    );

    // AllowAny, but a bad token is still refused.
    assert_eq!(
        get_with(&fake, "/api/v3/root/config/", None).await.status,
        200
    );
    assert_eq!(
        get_as(&fake, "/api/v3/root/config/", "nonsense")
            .await
            .detail(),
        (403, invalid)
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn a_token_without_permission_reads_me_and_version_but_no_directory() {
    let fake = start().await;
    let denied = json!("You do not have permission to perform this action.");
    let group = fake.with_state(|s| s.directory.group_by_name("HR").unwrap().pk.clone());
    for path in [
        "/api/v3/core/users/?page_size=1".to_owned(),
        "/api/v3/core/groups/".to_owned(),
        "/api/v3/core/users/1/".to_owned(),
        format!("/api/v3/core/groups/{group}/"),
    ] {
        assert_eq!(
            get_as(&fake, &path, NO_PERMISSION_TOKEN).await.detail(),
            (403, denied.clone()),
            "{path}"
        );
    }
    let me = get_as(&fake, "/api/v3/core/users/me/", NO_PERMISSION_TOKEN)
        .await
        .json();
    assert_eq!(me["user"]["username"], "svc-monitoring");
    assert_eq!(
        get_as(&fake, "/api/v3/admin/version/", NO_PERMISSION_TOKEN)
            .await
            .status,
        200
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn me_and_version_have_the_recorded_shapes() {
    let fake = start().await;
    let me = get(&fake, "/api/v3/core/users/me/").await;
    assert!(me.body.starts_with(r#"{"user":{"pk":"#));
    let user = me.json()["user"].clone();
    let keys: Vec<&str> = [
        "pk",
        "username",
        "name",
        "is_active",
        "is_superuser",
        "groups",
        "roles",
        "email",
        "avatar",
        "uid",
        "settings",
        "type",
        "system_permissions",
    ]
    .to_vec();
    assert_key_order(&me.body, &keys);
    assert_eq!(user.as_object().unwrap().len(), keys.len());
    assert_eq!(user["username"], "akadmin");
    assert_eq!(user["is_superuser"], true);
    assert_eq!(user["groups"][0]["name"], "authentik Admins");
    let permissions = user["system_permissions"].as_array().unwrap();
    assert_eq!(permissions.len(), 16);
    assert!(!permissions.contains(&json!("view_user")));

    let reader = get_as(&fake, "/api/v3/core/users/me/", READER_TOKEN)
        .await
        .json();
    assert_eq!(reader["user"]["system_permissions"], json!([]));
    assert_eq!(reader["user"]["is_superuser"], false);
    assert_eq!(reader["user"]["type"], "service_account");

    let version = get(&fake, "/api/v3/admin/version/").await;
    assert_eq!(
        version.body,
        r#"{"version_current":"2025.12.4","version_latest":"0.0.0","version_latest_valid":false,"build_hash":"","outdated":false,"outpost_outdated":false}"#
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn user_and_group_objects_keep_the_schema_key_order() {
    let fake = start().await;
    let user = get(
        &fake,
        "/api/v3/core/users/6/?include_groups=false&include_roles=false",
    )
    .await;
    assert_key_order(
        &user.body,
        &[
            "pk",
            "username",
            "name",
            "is_active",
            "last_login",
            "date_joined",
            "is_superuser",
            "groups",
            "groups_obj",
            "roles",
            "roles_obj",
            "email",
            "avatar",
            "attributes",
            "uid",
            "path",
            "type",
            "uuid",
            "password_change_date",
            "last_updated",
        ],
    );
    let user = user.json();
    assert_eq!(user.as_object().unwrap().len(), 20);
    let avatar = user["avatar"].as_str().unwrap();
    assert!(avatar.starts_with("data:image/svg+xml;base64,"), "{avatar}");
    assert!((600..1000).contains(&avatar.len()), "{}", avatar.len());
    let uid = fake.with_state(|s| s.directory.uid(6));
    assert_eq!(user["uid"], uid);

    let platform = fake.with_state(|s| s.directory.group_by_name("Platform").unwrap().pk.clone());
    let group = get(
        &fake,
        &format!("/api/v3/core/groups/{platform}/?include_users=false"),
    )
    .await;
    assert_key_order(
        &group.body,
        &[
            "pk",
            "num_pk",
            "name",
            "is_superuser",
            "parents",
            "parents_obj",
            "users",
            "users_obj",
            "attributes",
            "roles",
            "roles_obj",
            "inherited_roles_obj",
            "children",
            "children_obj",
        ],
    );
    assert_eq!(group.json().as_object().unwrap().len(), 14);
    assert_eq!(group.json()["roles_obj"], json!([]));
    fake.shutdown().await;
}

#[tokio::test]
async fn excluded_objects_are_null_while_id_lists_stay() {
    let fake = start().await;
    let admin = get(&fake, "/api/v3/core/users/1/").await.json();
    assert_eq!(admin["groups_obj"][0]["name"], "authentik Admins");
    assert_eq!(admin["roles_obj"], json!([]));
    // Anything but "true" (any case) is false.
    for query in [
        "include_groups=false&include_roles=false",
        "include_groups=1&include_roles=yes",
    ] {
        let user = get(&fake, &format!("/api/v3/core/users/1/?{query}"))
            .await
            .json();
        assert_eq!(user["groups_obj"], Value::Null, "{query}");
        assert_eq!(user["roles_obj"], Value::Null, "{query}");
        assert_eq!(user["groups"].as_array().unwrap().len(), 1);
        assert_eq!(user["roles"], json!([]));
    }
    assert_eq!(
        get(&fake, "/api/v3/core/users/1/?include_groups=TRUE")
            .await
            .json()["groups_obj"][0]["name"],
        "authentik Admins"
    );

    let platform = fake.with_state(|s| s.directory.group_by_name("Platform").unwrap().pk.clone());
    let url = format!("/api/v3/core/groups/{platform}/");
    let plain = get(&fake, &url).await.json();
    assert!(plain["users_obj"].is_array());
    assert_eq!(plain["parents_obj"], Value::Null);
    assert_eq!(plain["children_obj"], Value::Null);
    assert_eq!(plain["inherited_roles_obj"], Value::Null);
    assert_eq!(plain["parents"].as_array().unwrap().len(), 2);
    assert_eq!(plain["children"].as_array().unwrap().len(), 1);

    let full = get(
        &fake,
        &format!("{url}?include_users=false&include_parents=true&include_children=true"),
    )
    .await
    .json();
    assert_eq!(full["users_obj"], Value::Null);
    assert_eq!(full["users"], plain["users"]);
    let parents: Vec<&str> = full["parents_obj"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(parents, ["Engineering", "Operations"]);
    assert_eq!(full["children_obj"][0]["name"], "SRE");
    assert_eq!(
        full["children_obj"][0]["group_uuid"],
        full["children_obj"][0]["pk"]
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn group_members_are_derived_from_user_memberships() {
    let fake = start().await;
    let (alumni, hr, expected) = fake.with_state(|s| {
        let hr = s.directory.group_by_name("HR").unwrap().pk.clone();
        let members: Vec<i64> = s
            .directory
            .users
            .values()
            .filter(|u| u.groups.contains(&hr))
            .map(|u| u.pk)
            .collect();
        (
            s.directory.group_by_name("Alumni").unwrap().pk.clone(),
            hr,
            members,
        )
    });
    let group = get(&fake, &format!("/api/v3/core/groups/{hr}/"))
        .await
        .json();
    assert_eq!(group["users"], json!(expected));
    let members: Vec<i64> = group["users_obj"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["pk"].as_i64().unwrap())
        .collect();
    assert_eq!(members, expected);
    assert_eq!(
        get(&fake, &format!("/api/v3/core/groups/{alumni}/"))
            .await
            .json()["users"],
        json!([])
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn ordering_and_filters() {
    let fake = start().await;
    let all = "/api/v3/core/users/?page_size=100";
    let ascending = pks(&get(&fake, &format!("{all}&ordering=pk")).await.json());
    assert_eq!(ascending, (1..=55).collect::<Vec<_>>());
    let descending = pks(&get(&fake, &format!("{all}&ordering=-pk")).await.json());
    assert_eq!(descending, (1..=55).rev().collect::<Vec<_>>());

    let usernames = |page: &Value| -> Vec<String> {
        page["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap().to_owned())
            .collect()
    };
    let default = usernames(&get(&fake, all).await.json());
    let mut sorted = default.clone();
    sorted.sort();
    assert_eq!(default, sorted);
    assert_eq!(
        usernames(
            &get(&fake, &format!("{all}&ordering=bogus,uid"))
                .await
                .json()
        ),
        default
    );
    let mut reversed = sorted.clone();
    reversed.reverse();
    assert_eq!(
        usernames(
            &get(&fake, &format!("{all}&ordering=-username"))
                .await
                .json()
        ),
        reversed
    );

    let people = get(&fake, &format!("{all}&type=internal&type=external"))
        .await
        .json();
    assert_eq!(people["pagination"]["count"], 51); // akadmin + 50 people
    let bad_type = get(&fake, "/api/v3/core/users/?type=foo").await;
    assert_eq!(
        (bad_type.status, bad_type.json()),
        (
            400,
            json!({"type": ["Select a valid choice. foo is not one of the available choices."]})
        )
    );
    let bad_uuid = get(&fake, "/api/v3/core/users/?uuid=nope").await;
    assert_eq!(
        (bad_uuid.status, bad_uuid.json()),
        (400, json!({"uuid": ["Enter a valid UUID."]}))
    );
    let unknown_group = get(
        &fake,
        "/api/v3/core/users/?groups_by_pk=00000000-0000-4000-8000-000000000000",
    )
    .await;
    assert_eq!(unknown_group.status, 400);
    assert!(unknown_group.json()["groups_by_pk"][0]
        .as_str()
        .unwrap()
        .starts_with("Select a valid choice."));

    let (admins, admin_uuid) = fake.with_state(|s| {
        let admin = s.directory.user_by_username("akadmin").unwrap();
        (admin.groups[0].clone(), admin.uuid.to_uppercase())
    });
    assert_eq!(
        pks(
            &get(&fake, &format!("/api/v3/core/users/?groups_by_pk={admins}"))
                .await
                .json()
        ),
        [1]
    );
    assert_eq!(
        pks(
            &get(&fake, &format!("/api/v3/core/users/?uuid={admin_uuid}"))
                .await
                .json()
        ),
        [1]
    );
    assert_eq!(
        pks(&get(&fake, "/api/v3/core/users/?search=AKADM").await.json()),
        [1]
    );
    let inactive = get(&fake, &format!("{all}&is_active=false")).await.json();
    assert!(inactive["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|u| u["is_active"] == false));
    assert!(inactive["pagination"]["count"].as_u64().unwrap() >= 5);
    // Unrecognised booleans filter nothing.
    assert_eq!(
        get(&fake, &format!("{all}&is_active=0")).await.json()["pagination"]["count"],
        USERS
    );

    let new_pk = fake.with_state(|s| s.directory.add_user("fresh.hire", "internal"));
    let changed = get(
        &fake,
        "/api/v3/core/users/?last_updated__gt=2026-02-28T00:00:00Z",
    )
    .await
    .json();
    assert_eq!(pks(&changed), [new_pk]);

    let groups = get(&fake, "/api/v3/core/groups/?page_size=100&ordering=-name")
        .await
        .json();
    let names: Vec<&str> = groups["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    // Byte order, as under the C collation.
    assert_eq!(names.first(), Some(&"authentik Admins"));
    assert_eq!(names.last(), Some(&"Alumni"));
    let of_admin = get(&fake, "/api/v3/core/groups/?members_by_pk=1")
        .await
        .json();
    assert_eq!(of_admin["results"][0]["name"], "authentik Admins");
    assert_eq!(
        get(&fake, "/api/v3/core/groups/?members_by_pk=99999")
            .await
            .status,
        400
    );
    assert_eq!(
        get(&fake, "/api/v3/core/groups/?search=ENG").await.json()["pagination"]["count"],
        1
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn detail_endpoints_404_with_drf_messages() {
    let fake = start().await;
    assert_eq!(
        get(&fake, "/api/v3/core/users/999/").await.detail(),
        (404, json!("No User matches the given query."))
    );
    assert_eq!(
        get(&fake, "/api/v3/core/users/abc/").await.detail(),
        (404, json!("Not found."))
    );
    let missing = "/api/v3/core/groups/00000000-0000-4000-8000-000000000000/";
    assert_eq!(
        get(&fake, missing).await.detail(),
        (404, json!("No Group matches the given query."))
    );
    assert_eq!(
        get(&fake, "/api/v3/core/groups/nope/").await.detail(),
        (404, json!("Not found."))
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn legacy_shape_has_a_single_parent_and_no_roles() {
    let fake = start().await;
    fake.with_state(|s| s.legacy_parent_shape = true);
    let (platform, engineering) = fake.with_state(|s| {
        let d = &s.directory;
        (
            d.group_by_name("Platform").unwrap().pk.clone(),
            d.group_by_name("Engineering").unwrap().pk.clone(),
        )
    });
    let group = get(
        &fake,
        &format!("/api/v3/core/groups/{platform}/?include_parents=true"),
    )
    .await;
    assert_key_order(
        &group.body,
        &[
            "pk",
            "num_pk",
            "name",
            "is_superuser",
            "parent",
            "parent_name",
            "users",
        ],
    );
    let group = group.json();
    assert_eq!(group["parent"], json!(engineering));
    assert_eq!(group["parent_name"], "Engineering");
    for absent in ["parents", "parents_obj", "inherited_roles_obj"] {
        assert!(group.get(absent).is_none(), "{absent}");
    }
    let engineering = get(&fake, &format!("/api/v3/core/groups/{engineering}/"))
        .await
        .json();
    assert_eq!(
        (
            engineering["parent"].clone(),
            engineering["parent_name"].clone()
        ),
        (Value::Null, Value::Null)
    );

    let users = get(&fake, "/api/v3/core/users/?page_size=100").await.json();
    let user = users["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["groups"].as_array().unwrap().len() > 1)
        .unwrap();
    assert!(user.get("roles").is_none() && user.get("roles_obj").is_none());
    assert!(user["groups_obj"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g.get("parent").is_some() && g.get("parent_name").is_some()));
    fake.shutdown().await;
}

#[tokio::test]
async fn superuser_status_is_inherited_from_ancestor_groups() {
    let fake = start().await;
    let pk = fake.with_state(|s| {
        let admins = s
            .directory
            .group_by_name("authentik Admins")
            .unwrap()
            .pk
            .clone();
        let break_glass = s.directory.add_group("Break Glass", &[&admins], false);
        let on_call = s.directory.add_group("On Call", &[&break_glass], false);
        let pk = s.directory.add_user("oncall.person", "internal");
        s.directory.users.get_mut(&pk).unwrap().groups.push(on_call);
        pk
    });
    let user = get(&fake, &format!("/api/v3/core/users/{pk}/"))
        .await
        .json();
    assert_eq!(user["is_superuser"], true);
    assert_eq!(user["groups_obj"][0]["is_superuser"], false);
    // The filter only counts direct memberships.
    let direct = pks(&get(&fake, "/api/v3/core/users/?is_superuser=true")
        .await
        .json());
    assert_eq!(direct, [1]);
    let ordinary = get(&fake, "/api/v3/core/users/6/").await.json();
    assert_eq!(ordinary["is_superuser"], false);
    fake.shutdown().await;
}

#[tokio::test]
async fn object_permissions_give_partial_lists() {
    let fake = start().await;
    let (own_pk, visible_users) = fake.with_state(|s| {
        let token = &s.directory.tokens[OBJECT_READER_TOKEN];
        let TokenKind::ObjectReader { users, .. } = &token.kind else {
            panic!("kind")
        };
        (token.user_pk, users.clone())
    });
    let users = get_as(
        &fake,
        "/api/v3/core/users/?ordering=pk",
        OBJECT_READER_TOKEN,
    )
    .await
    .json();
    assert_eq!(pks(&users), visible_users);
    assert!(!visible_users.contains(&own_pk) && visible_users.len() == 4);
    let groups = get_as(&fake, "/api/v3/core/groups/", OBJECT_READER_TOKEN)
        .await
        .json();
    assert_eq!(groups["pagination"]["count"], 2);
    let hidden = get_as(&fake, "/api/v3/core/users/1/", OBJECT_READER_TOKEN).await;
    assert_eq!(
        hidden.detail(),
        (404, json!("No User matches the given query."))
    );
    let me = get_as(&fake, "/api/v3/core/users/me/", OBJECT_READER_TOKEN)
        .await
        .json();
    assert_eq!(me["user"]["pk"], own_pk);

    // Nothing left to see is a 403, except for outposts' internal service accounts.
    fake.with_state(|s| {
        let token = s.directory.tokens.get_mut(OBJECT_READER_TOKEN).unwrap();
        token.kind = TokenKind::ObjectReader {
            users: vec![],
            groups: vec![],
        };
    });
    assert_eq!(
        get_as(&fake, "/api/v3/core/users/", OBJECT_READER_TOKEN)
            .await
            .status,
        403
    );
    fake.with_state(|s| {
        let outpost = s
            .directory
            .users
            .values()
            .find(|u| u.user_type == "internal_service_account")
            .unwrap()
            .pk;
        s.directory
            .tokens
            .get_mut(OBJECT_READER_TOKEN)
            .unwrap()
            .user_pk = outpost;
    });
    let outpost_view = get_as(&fake, "/api/v3/core/users/", OBJECT_READER_TOKEN).await;
    assert_eq!(
        (
            outpost_view.status,
            outpost_view.json()["pagination"]["count"].clone()
        ),
        (200, json!(0))
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn faults_skip_then_answer_a_limited_number_of_times() {
    let fake = start().await;
    fake.with_state(|s| {
        s.faults.push(Fault {
            path_contains: "/core/users/".to_owned(),
            skip: 1,
            times: Some(2),
            status: 502,
            body: "<html>Bad Gateway</html>".into(),
            retry_after: None,
            location: None,
        });
        s.faults.push(Fault {
            path_contains: "/core/groups/".to_owned(),
            skip: 0,
            times: None,
            status: 429,
            body: r#"{"detail": "Request was throttled. Expected available in 3 seconds."}"#.into(),
            retry_after: Some("3".into()),
            location: None,
        });
    });
    let statuses = [
        get(&fake, "/api/v3/core/users/").await.status,
        get(&fake, "/api/v3/core/users/?page=2").await.status,
        get(&fake, "/api/v3/core/users/me/").await.status,
        get(&fake, "/api/v3/core/users/").await.status,
    ];
    assert_eq!(statuses, [200, 502, 502, 200]);
    let bad_gateway = fake.with_state(|s| s.faults[0].clone());
    assert_eq!((bad_gateway.skip, bad_gateway.times), (0, Some(0)));
    for _ in 0..2 {
        let throttled = get_with(&fake, "/api/v3/core/groups/", None).await;
        assert_eq!(throttled.status, 429);
        assert_eq!(throttled.content_type, "application/json");
        assert_eq!(throttled.retry_after.as_deref(), Some("3"));
    }
    fake.with_state(|s| s.faults[0].times = None);
    let html = get(&fake, "/api/v3/core/users/").await;
    assert!(html.content_type.starts_with("text/html") && html.body.contains("Bad Gateway"));
    fake.shutdown().await;
}

#[tokio::test]
async fn page_hooks_run_once_right_before_their_page() {
    let fake = start().await;
    fake.with_state(|s| {
        s.page_hooks.push(PageHook {
            list: ListKind::Users,
            page: 2,
            // Sorts before everyone, so page 2 repeats the last user of page 1.
            action: Box::new(|d| {
                d.add_user("aaa.newcomer", "internal");
            }),
        });
        s.page_hooks.push(PageHook {
            list: ListKind::Groups,
            page: 1,
            action: Box::new(|d| {
                let alumni = d.group_by_name("Alumni").unwrap().pk.clone();
                d.remove_group(&alumni);
            }),
        });
    });
    let first = get(&fake, "/api/v3/core/users/?page_size=20").await.json();
    assert_eq!(first["pagination"]["count"], USERS);
    let second = get(&fake, "/api/v3/core/users/?page_size=20&page=2")
        .await
        .json();
    assert_eq!(second["pagination"]["count"], USERS + 1);
    assert_eq!(second["results"][0], first["results"][19]);
    let again = get(&fake, "/api/v3/core/users/?page_size=20&page=2")
        .await
        .json();
    assert_eq!(again["pagination"]["count"], USERS + 1);
    assert_eq!(fake.with_state(|s| s.page_hooks.len()), 1);

    let groups = get(&fake, "/api/v3/core/groups/").await.json();
    assert_eq!(groups["pagination"]["count"], 10);
    assert!(fake.with_state(|s| s.page_hooks.is_empty()));
    fake.shutdown().await;
}

#[tokio::test]
async fn requests_are_logged_and_delayed() {
    let fake = start().await;
    fake.with_state(|s| s.latency = Duration::from_millis(60));
    let started = Instant::now();
    get(&fake, "/api/v3/core/users/?ordering=pk&page=2").await;
    assert!(started.elapsed() >= Duration::from_millis(60));
    get(&fake, "/api/v3/core/users").await;
    let log = fake.with_state(|s| s.request_log.clone());
    assert_eq!(
        log,
        [
            "/api/v3/core/users/?ordering=pk&page=2",
            "/api/v3/core/users"
        ]
    );
    fake.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let fake = start().await;
    let addr = fake.addr();
    assert_eq!(fake.base_url(), format!("http://{addr}"));
    fake.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn generation_is_deterministic_and_realistic() {
    let dir = Directory::generate(42, 40);
    assert_eq!(dir, Directory::generate(42, 40));
    assert_eq!(
        format!("{dir:?}"),
        format!("{:?}", Directory::generate(42, 40))
    );
    assert_ne!(dir, Directory::generate(43, 40));

    let uid = dir.uid(1);
    assert!(
        uid.len() == 64
            && uid
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    let is_uuid = |s: &str| {
        let parts: Vec<usize> = s.split('-').map(str::len).collect();
        parts == [8, 4, 4, 4, 12]
            && s.chars()
                .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c))
    };
    assert!(is_uuid(&dir.install_id));
    assert!(dir.users.values().all(|u| is_uuid(&u.uuid)) && dir.groups.keys().all(|g| is_uuid(g)));
    assert_eq!(
        dir.users.keys().copied().collect::<Vec<_>>(),
        (1..=45).collect::<Vec<_>>()
    );

    let count = |f: &dyn Fn(&FakeUser) -> bool| dir.users.values().filter(|u| f(u)).count();
    assert_eq!(
        count(&|u| u.username.starts_with("ak-outpost-")
            && u.user_type == "internal_service_account"
            && u.path == "goauthentik.io/outposts"),
        1
    );
    assert!(
        count(&|u| u.user_type == "service_account" && u.path == "goauthentik.io/service-accounts")
            >= 2
    );
    assert_eq!(
        count(&|u| u.user_type == "service_account" && u.path == "users"),
        1
    );
    assert!(count(&|u| u.user_type == "external") >= 4);
    assert!(count(&|u| !u.is_active) >= 3);
    assert!(count(&|u| u.name.is_empty()) >= 2);
    assert!(count(&|u| u.email != u.email.to_lowercase()) >= 3);
    assert!(count(&|u| u.last_login.is_some()) >= 10 && count(&|u| u.last_login.is_none()) >= 10);
    assert!(
        count(&|u| u.date_joined.contains('.')) > 0 && count(&|u| !u.date_joined.contains('.')) > 0
    );
    let usernames: std::collections::BTreeSet<&str> =
        dir.users.values().map(|u| u.username.as_str()).collect();
    assert_eq!(usernames.len(), dir.users.len());

    assert_eq!(dir.group_by_name("Platform").unwrap().parents.len(), 2);
    let alumni = &dir.group_by_name("Alumni").unwrap().pk;
    assert!(dir.users.values().all(|u| !u.groups.contains(alumni)));
    assert_eq!(
        dir.tokens[READER_TOKEN].user_pk,
        dir.user_by_username("svc-aksync-reader").unwrap().pk
    );
    assert_eq!(
        dir.tokens[SUPERUSER_TOKEN].user_pk,
        dir.user_by_username("akadmin").unwrap().pk
    );
}

#[test]
fn removing_a_group_cascades() {
    let mut dir = Directory::generate(1, 30);
    let platform = dir.group_by_name("Platform").unwrap().pk.clone();
    dir.remove_group(&platform);
    assert!(dir.group_by_name("Platform").is_none());
    assert!(dir.group_by_name("SRE").unwrap().parents.is_empty());
    assert!(dir.users.values().all(|u| !u.groups.contains(&platform)));
}
