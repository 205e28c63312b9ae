//! Sampler names as users type them: the CLI's (`euler-a`), A1111's
//! (`Euler a`), and A1111's separate sigma schedule (`Karras`).

use sd_scheduler::SamplerKind;

use crate::error::{PipelineError, Result};
use crate::front::Field;

/// A sampler by CLI or A1111 name, with A1111's `scheduler` ("Automatic"
/// or "Karras", which only DPM++ 2M has here); `None` (or empty): the
/// model's own sampler.
pub fn parse_sampler(name: Option<&str>, schedule: Option<&str>) -> Result<Option<SamplerKind>> {
    let kind = match name.map(str::trim).filter(|n| !n.is_empty()) {
        None => None,
        Some(name) => Some(SamplerKind::from_any_name(name).map_err(|_| {
            let known: Vec<&str> = SamplerKind::A1111_NAMES.iter().map(|(n, _)| *n).collect();
            let cli: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.name()).collect();
            PipelineError::request(
                Field::Sampler,
                format!(
                    "unknown sampler {name:?}; known: {} (or {})",
                    known.join(", "),
                    cli.join(", ")
                ),
            )
        })?),
    };
    match schedule.map(str::trim) {
        None | Some("") => Ok(kind),
        Some(s) if s.eq_ignore_ascii_case("automatic") => Ok(kind),
        Some(s) if s.eq_ignore_ascii_case("karras") => match kind {
            Some(SamplerKind::DpmPlusPlus2M | SamplerKind::DpmPlusPlus2MKarras) => {
                Ok(Some(SamplerKind::DpmPlusPlus2MKarras))
            }
            _ => Err(PipelineError::request(
                Field::SamplerSchedule,
                "Karras sigmas are available with the sampler \"DPM++ 2M\"",
            )),
        },
        Some(other) => Err(PipelineError::request(
            Field::SamplerSchedule,
            format!("unknown schedule {other:?}; use \"Automatic\" or \"Karras\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_every_frontend_give_one_sampler() {
        for (a1111, cli) in [("Euler a", "euler-a"), ("DPM++ 2M", "dpm++2m")] {
            assert_eq!(
                parse_sampler(Some(a1111), None).unwrap(),
                parse_sampler(Some(cli), None).unwrap()
            );
        }
        assert_eq!(
            parse_sampler(Some("DPM++ 2M"), Some("Karras")).unwrap(),
            Some(SamplerKind::DpmPlusPlus2MKarras)
        );
        assert_eq!(parse_sampler(Some(" "), None).unwrap(), None);
        for (name, schedule, field) in [
            ("nope", None, Field::Sampler),
            ("Euler", Some("Karras"), Field::SamplerSchedule),
            ("Euler", Some("Exponential"), Field::SamplerSchedule),
        ] {
            match parse_sampler(Some(name), schedule) {
                Err(PipelineError::InvalidInput { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{name} {schedule:?}: {other:?}"),
            }
        }
    }
}
