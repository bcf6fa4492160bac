//! Data location (control 6.1.3): customer data stays in the deployment's region. Every
//! service is told its region (`KIROKU_REGION`, default `jp`) and the regions data may be
//! kept in (`KIROKU_ALLOWED_REGIONS`, default `jp`), and the region of each place it
//! stores data (NATS JetStream, PostgreSQL; default: the service's region). A target
//! outside the allowed regions stops the service at start-up with a clear error.

/// The default region and allow-list: Japan.
pub const DEFAULT_REGION: &str = "jp";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLocation {
    pub region: String,
    pub allowed: Vec<String>,
}

fn normalize(name: &str) -> String {
    name.trim().to_ascii_lowercase()
}

impl DataLocation {
    /// `allowed` is comma-separated; the service's own region must be in it.
    pub fn new(region: &str, allowed: &str) -> Result<Self, String> {
        let allowed: Vec<String> = allowed
            .split(',')
            .map(normalize)
            .filter(|r| !r.is_empty())
            .collect();
        if allowed.is_empty() {
            return Err("the allowed regions are empty (KIROKU_ALLOWED_REGIONS)".into());
        }
        let location = Self {
            region: normalize(region),
            allowed,
        };
        location.check("this service", Some(region))?;
        Ok(location)
    }

    /// `Ok` when `target` (e.g. "PostgreSQL") is in an allowed region (`None`: the
    /// service's own).
    pub fn check(&self, target: &str, region: Option<&str>) -> Result<(), String> {
        let region = region
            .map(normalize)
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| self.region.clone());
        if self.allowed.contains(&region) {
            Ok(())
        } else {
            Err(format!(
                "{target} is in region {region:?}, outside the allowed regions [{}]: \
                 customer data must stay there (control 6.1.3; KIROKU_ALLOWED_REGIONS)",
                self.allowed.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // control 6.1.3: a target outside the allowed regions is refused.
    #[test]
    fn control_6_1_3_targets_outside_the_allowed_regions_are_refused() {
        let jp = DataLocation::new("jp", "jp").expect("jp");
        assert!(jp.check("PostgreSQL", None).is_ok());
        assert!(jp.check("PostgreSQL", Some("JP ")).is_ok());
        let error = jp.check("PostgreSQL", Some("us-east-1")).expect_err("us");
        assert!(
            error.contains("\"us-east-1\"") && error.contains("[jp]"),
            "{error}"
        );
        assert!(DataLocation::new("us", "jp").is_err());
        assert!(DataLocation::new("jp", " , ").is_err());
        let both = DataLocation::new("jp", "jp, jp-osaka").expect("two");
        assert!(both.check("backups", Some("jp-osaka")).is_ok());
    }
}
