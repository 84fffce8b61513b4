{#- Metric definitions. The type, the denominator, the role and the tolerated drop are optional
    columns of raw.metrics: a table without them defines count metrics, each a primary metric. -#}
{%- set raw_metrics = source('raw', 'metrics') -%}
with

source as (

    select * from {{ raw_metrics }}

),

renamed as (

    select
        {{ typed_raw_columns(raw_metrics, 'metrics') }},
        {{ optional_raw_column(raw_metrics, 'metric_type', 'lower', "'count'") }} as metric_type,
        {{ optional_raw_column(raw_metrics, 'denominator_event', 'text', 'cast(null as ' ~ dbt.type_string() ~ ')') }}
            as denominator_event,
        {{ optional_raw_column(raw_metrics, 'role', 'lower', "'primary'") }} as role,
        {{ optional_raw_column(raw_metrics, 'tolerated_drop', 'double', 'cast(null as ' ~ type_double() ~ ')') }}
            as tolerated_drop
    from source

)

select * from renamed
