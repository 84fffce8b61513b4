{#- raw.variants is optional: a warehouse without it plans an equal split for every experiment,
    and this model is then empty. Declared weights need not sum to 1: the fit normalises them. -#}
{%- set relation = optional_raw_relation('variants') -%}

with

{% if relation is not none -%}

source as (

    select * from {{ source('raw', 'variants') }}

),

renamed as (

    select
        cast(experiment_id as {{ dbt.type_string() }}) as experiment_id,
        cast(variant as {{ dbt.type_string() }}) as variant,
        cast(traffic_weight as {{ type_double() }}) as traffic_weight
    from source

)

{%- else -%}

renamed as (

    select
        cast(null as {{ dbt.type_string() }}) as experiment_id,
        cast(null as {{ dbt.type_string() }}) as variant,
        cast(null as {{ type_double() }}) as traffic_weight
    where 1 = 0

)

{%- endif %}

select * from renamed
