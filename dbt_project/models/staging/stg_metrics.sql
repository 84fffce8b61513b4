with

source as (

    select * from {{ source('raw', 'metrics') }}

),

renamed as (

    select {{ typed_raw_columns(source('raw', 'metrics'), 'metrics') }}
    from source

)

select * from renamed
