{#- raw.user_segments is optional: a warehouse without it breaks nothing down, and this model is then
    empty. Rows missing the user, the dimension or the segment say nothing and are dropped. -#}
{%- set relation = optional_raw_relation('user_segments') -%}

with

{% if relation is not none -%}

source as (

    select * from {{ source('raw', 'user_segments') }}

),

renamed as (

    select
        cast(experiment_id as {{ dbt.type_string() }}) as experiment_id,
        cast(user_id as {{ dbt.type_string() }}) as user_id,
        cast(dimension as {{ dbt.type_string() }}) as dimension,
        cast(segment as {{ dbt.type_string() }}) as segment
    from source
    where user_id is not null
      and dimension is not null
      and segment is not null

)

{%- else -%}

renamed as (

    select
        cast(null as {{ dbt.type_string() }}) as experiment_id,
        cast(null as {{ dbt.type_string() }}) as user_id,
        cast(null as {{ dbt.type_string() }}) as dimension,
        cast(null as {{ dbt.type_string() }}) as segment
    where 1 = 0

)

{%- endif %}

select * from renamed
